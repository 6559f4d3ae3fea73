"""Validates every line of nightshift results files with the official Anthropic SDK's type."""
import sys
from anthropic.types.messages import MessageBatchIndividualResponse

ok = bad = 0
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                MessageBatchIndividualResponse.model_validate_json(line)
                ok += 1
            except Exception as e:  # noqa: BLE001 - every failure is reported
                bad += 1
                print(f"{path}:{n}: {e}".splitlines()[0], file=sys.stderr)
print(f"{ok} of {ok + bad} lines validate as MessageBatchIndividualResponse")
sys.exit(1 if bad else 0)
