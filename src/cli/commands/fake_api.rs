//! `nightshift fake-api`: the built-in fake Claude API on 127.0.0.1, until Ctrl-C.

use std::process::ExitCode;

use anyhow::Context;

use super::demo::fake_config_from_args;
use crate::cli::args::FakeApiArgs;
use crate::cli::runtime;
use crate::cli::signals::shutdown_signal;
use crate::fake_api::FakeApi;

pub fn run(args: &FakeApiArgs) -> anyhow::Result<ExitCode> {
    let fake_config = fake_config_from_args(args);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    runtime()?.block_on(async move {
        let fake = FakeApi::start(fake_config, addr)
            .await
            .with_context(|| format!("starting the fake API on {addr}"))?;
        println!("fake Claude API listening on {}", fake.base_url());
        println!(
            "use it with: ANTHROPIC_BASE_URL={} ANTHROPIC_API_KEY=any",
            fake.base_url()
        );
        shutdown_signal().await;
        fake.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
