//! `nightshift plan FILE`: tokens, batch vs real-time cost, drain time and the binding limit,
//! without sending anything (`--count-tokens` asks the API's free count_tokens endpoint for the
//! input tokens; `--check` asks it whether it takes each request shape, and exits 65 if not).

use std::path::Path;
use std::process::ExitCode;

use crate::api::{ApiClient, load_route_key};
use crate::cli::views::plan::{ApiCounter, estimated, plan};
use crate::cli::{EXIT_REFUSED, load_config, print_report};
use crate::store::now_ms;

/// What `plan` asks the API, if anything.
pub struct Asks {
    pub count_tokens: bool,
    pub check: bool,
    /// Most count_tokens calls a minute.
    pub rpm: u32,
}

pub fn run(config: Option<&Path>, file: &Path, asks: Asks, json: bool) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let mut counter = if asks.count_tokens || asks.check {
        // The first route's (the one the daemon calls along for now).
        let route = &config.routes[0];
        let client = ApiClient::new(&config.api, route, &load_route_key(&config, route)?)?;
        Some(ApiCounter::new(client, asks.rpm)?)
    } else {
        None
    };
    let report = match counter.as_mut() {
        Some(counter) => {
            let (count_tokens, check) = (asks.count_tokens, asks.check);
            // One counter serves both: the endpoint's RPM is shared.
            let counter = std::cell::RefCell::new(counter);
            plan(
                &config,
                file,
                now_ms(),
                &mut |lines| {
                    if !count_tokens {
                        return estimated(lines);
                    }
                    let mut counter = counter.borrow_mut();
                    let counts = counter.count(lines)?;
                    if counter.counted % 2560 == 0 {
                        eprintln!("counting input tokens: {} requests so far", counter.counted);
                    }
                    Ok(counts)
                },
                check
                    .then_some(&mut |params: &str| counter.borrow_mut().check(params))
                    .map(|f| f as &mut crate::cli::views::plan::ShapeChecker<'_>),
            )?
        }
        None => plan(&config, file, now_ms(), &mut estimated, None)?,
    };
    let refused = report.check.as_ref().is_some_and(|c| !c.refused.is_empty());
    let code = print_report(json, &report, |r| r.to_text())?;
    Ok(if refused {
        ExitCode::from(EXIT_REFUSED)
    } else {
        code
    })
}
