//! `nightshift plan FILE`: tokens, batch vs real-time cost, drain time and the binding limit,
//! without sending anything (`--count-tokens` asks the API's free count_tokens endpoint).

use std::path::Path;
use std::process::ExitCode;

use crate::api::ApiClient;
use crate::cli::views::plan::{ApiCounter, estimated, plan};
use crate::cli::{load_config, load_key, print_report};

pub fn run(
    config: Option<&Path>,
    file: &Path,
    count_tokens: bool,
    count_tokens_rpm: u32,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let report = if count_tokens {
        let client = ApiClient::new(&config.api, &load_key(&config)?)?;
        let mut counter = ApiCounter::new(client, count_tokens_rpm)?;
        plan(&config, file, &mut |lines| {
            let counts = counter.count(lines)?;
            if counter.counted % 2560 == 0 {
                eprintln!("counting input tokens: {} requests so far", counter.counted);
            }
            Ok(counts)
        })?
    } else {
        plan(&config, file, &mut estimated)?
    };
    print_report(json, &report, |r| r.to_text())
}
