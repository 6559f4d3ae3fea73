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
        outln!("fake Claude API listening on {}", fake.base_url());
        for org in &args.orgs {
            outln!("organization {}: keys {}", org.id, org.keys.join(", "));
        }
        let key = args.orgs.first().and_then(|o| o.keys.first());
        outln!(
            "use it with: ANTHROPIC_BASE_URL={} ANTHROPIC_API_KEY={}",
            fake.base_url(),
            key.map_or("any", String::as_str)
        );
        shutdown_signal().await;
        fake.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::args::{Cli, Command};

    fn config_of(args: &[&str]) -> Result<crate::fake_api::FakeConfig, clap::Error> {
        let cli = Cli::try_parse_from([&["nightshift", "fake-api"], args].concat())?;
        let Command::FakeApi(args) = cli.command else {
            panic!("not fake-api")
        };
        Ok(super::fake_config_from_args(&args))
    }

    fn limits_of(args: &[&str]) -> Option<crate::fake_api::FakeLimits> {
        config_of(args).expect("args").limits
    }

    #[test]
    fn each_org_option_is_an_org_with_its_keys() {
        use crate::fake_api::FakeOrg;
        assert!(config_of(&[]).expect("args").orgs.is_empty());
        let config =
            config_of(&["--org", "org-a=sk-a1,sk-a2", "--org", "org-b=sk-b"]).expect("args");
        assert_eq!(
            config.orgs,
            [
                FakeOrg::new("org-a", ["sk-a1", "sk-a2"]),
                FakeOrg::new("org-b", ["sk-b"])
            ]
        );
        assert_eq!(config.orgs[1].workspace_id, "wrkspc_org-b");
        for bad in ["org-a", "=sk", "org-a=", "org-a=sk,,sk2"] {
            assert!(config_of(&["--org", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_left_out_are_the_start_tiers_so_answers_carry_the_headers() {
        let limits = limits_of(&[]).expect("limits by default");
        assert_eq!(
            (limits.rpm, limits.itpm, limits.otpm),
            (1_000, 2_000_000, 400_000)
        );
        let limits = limits_of(&["--rpm", "50"]).expect("limits");
        assert_eq!(
            (limits.rpm, limits.itpm, limits.otpm),
            (50, 2_000_000, 400_000)
        );
        assert_eq!(limits_of(&["--no-limits"]), None);
    }
}
