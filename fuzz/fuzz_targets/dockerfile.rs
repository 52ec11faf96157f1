//! Arbitrary bytes as a Dockerfile: parse, plan and render must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbuild::image::{Digest, ImageConfig};
use rbuild::plan::{BaseResolver, BuildOptions, ResolvedBase};

/// Every image resolves to the same small config, except `onbuild*` ones, which carry
/// ONBUILD triggers (so trigger parsing is fuzzed too), and `missing*`, which fail.
struct Fixed;

impl BaseResolver for Fixed {
    fn resolve(&mut self, reference: &str) -> Result<ResolvedBase, String> {
        if reference.starts_with("missing") {
            return Err("manifest unknown".into());
        }
        let mut config = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..Default::default()
        };
        config.set_env("PATH", "/usr/bin:/bin");
        config.config.cmd = Some(vec!["/bin/sh".into()]);
        if reference.starts_with("onbuild") {
            config.config.on_build = Some(vec![
                "COPY . /app/src".into(),
                "RUN echo triggered $PATH".into(),
            ]);
        }
        Ok(ResolvedBase {
            id: Digest::of(b"fuzz-base"),
            config,
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let opts = BuildOptions {
        dockerfile_name: "Dockerfile".into(),
        ..Default::default()
    };
    match rbuild::plan::plan(&text, &opts, &mut Fixed) {
        Ok(plan) => {
            let _ = rbuild::plan::render(&plan);
            let _ = plan.waves();
            let _ = plan.keys_without_content();
        }
        Err(e) => {
            let _ = e.to_string();
            // `Dockerfile:N` must point at a line of the file.
            if let Some(line) = e.line() {
                let lines = text.split('\n').count();
                assert!((1..=lines).contains(&line), "line {line} of {lines}: {e}");
            }
        }
    }
});
