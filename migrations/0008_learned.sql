-- What each limit class learned (the API's limits, bucket sizes, concurrency, calibration), kept
-- so a restart resumes at the learned rate instead of from a probe; NULL until first published.
ALTER TABLE quota_state ADD COLUMN learned TEXT;
