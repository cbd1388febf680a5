//! DP wrappers compose with the strategy they wrap: they keep its
//! sampling, configs and evaluation, and the common FedAvg options given to
//! a wrapper by name reach the wrapped strategy.

use flower_core::{Parameters, Scalar};
use flower_strategy::{
    build_strategy, fixed_config, AdaptiveClippingOptions, ClientId, ClientSampler, CommonOptions,
    DpClientSideFixedClipping, DpServerSideAdaptiveClipping, FedAvgOptions, FedProx,
    FixedClippingOptions, Strategy, StrategyError, StrategySpec,
};

use crate::golden_data::FakeSampler;

fn fit_clients(s: &mut dyn Strategy, available: usize) -> Vec<ClientId> {
    let mut sampler = FakeSampler { available };
    s.configure_fit(1, &Parameters::default(), &mut sampler)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

#[test]
fn every_wrapper_takes_the_common_options_at_its_top_level() {
    let wrappers: [(&str, &[(&str, serde_json::Value)]); 6] = [
        ("dp-server-fixed", &[("clipping_norm", 1.0.into())]),
        ("dp-client-fixed", &[("clipping_norm", 1.0.into())]),
        ("dp-server-adaptive", &[]),
        ("dp-client-adaptive", &[]),
        ("dpfedavg-fixed", &[("clip_norm", 1.0.into())]),
        ("dpfedavg-adaptive", &[]),
    ];
    for (name, own) in wrappers {
        let mut spec = StrategySpec::new(name)
            .option("num_sampled_clients", 100)
            .option("min_fit_clients", 6)
            .option("min_available_clients", 6)
            .option("fraction_fit", 0.5)
            .option("fit_config", serde_json::json!({ "epochs": 2 }));
        if !name.starts_with("dpfedavg") {
            spec = spec.option("noise_multiplier", 0.0);
        }
        for (k, v) in own {
            spec = spec.option(*k, v.clone());
        }
        let mut s = build_strategy(&spec, CommonOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(s.min_available_clients(), 6, "{name}");
        // max(int(20 · 0.5), 6) = 10 of 20; min_fit_clients 6 of 8.
        assert_eq!(fit_clients(s.as_mut(), 20).len(), 10, "{name}");
        assert_eq!(fit_clients(s.as_mut(), 8).len(), 6, "{name}");
        let mut sampler = FakeSampler { available: 8 };
        let ins = s
            .configure_fit(3, &Parameters::default(), &mut sampler)
            .unwrap();
        assert_eq!(ins[0].1.config["epochs"], Scalar::Sint64(2), "{name}");
    }
}

#[test]
fn a_conflicting_nested_value_is_an_error() {
    let spec = StrategySpec::new("dp-client-fixed")
        .option("noise_multiplier", 0.0)
        .option("clipping_norm", 1.0)
        .option("num_sampled_clients", 2)
        .option("accept_failures", false)
        .option(
            "strategy",
            serde_json::json!({ "name": "fedavg", "options": { "accept_failures": true } }),
        );
    let e = build_strategy(&spec, CommonOptions::default()).unwrap_err();
    assert!(
        matches!(&e, StrategyError::Config(m) if m.contains("accept_failures")),
        "{e}"
    );
}

#[test]
fn a_wrapper_keeps_the_wrapped_configs_and_adds_its_own() {
    let options = FedAvgOptions::default().on_fit_config_fn(fixed_config(
        [("proximal_mu".to_owned(), Scalar::Double(9.0))].into(),
    ));
    let prox = FedProx::new(options, 0.25).unwrap();
    let clip = FixedClippingOptions {
        noise_multiplier: 0.0,
        clipping_norm: 2.0,
        num_sampled_clients: 2,
    };
    let mut s = DpClientSideFixedClipping::new(prox, clip, Some(1)).unwrap();
    assert_eq!(s.name(), "DifferentialPrivacyClientSideFixedClipping");
    let mut sampler = FakeSampler { available: 2 };
    let ins = s
        .configure_fit(1, &Parameters::default(), &mut sampler)
        .unwrap();
    assert_eq!(sampler.all().len(), 2);
    assert_eq!(ins.len(), 2);
    let config = &ins[0].1.config;
    // FedProx's mu overrides the callback's, the wrapper adds the norm.
    assert_eq!(config["proximal_mu"], Scalar::Double(0.25));
    assert_eq!(config["clipping_norm"], Scalar::Double(2.0));
}

#[test]
fn wrappers_nest() {
    let inner = DpClientSideFixedClipping::new(
        flower_strategy::FedAvg::new(FedAvgOptions::with_min_clients(3)).unwrap(),
        FixedClippingOptions {
            noise_multiplier: 0.0,
            clipping_norm: 1.0,
            num_sampled_clients: 3,
        },
        Some(1),
    )
    .unwrap();
    let s = DpServerSideAdaptiveClipping::new(inner, AdaptiveClippingOptions::new(0.0, 3), Some(2))
        .unwrap();
    assert_eq!(s.min_available_clients(), 3);
    assert_eq!(
        s.clipping_norm(),
        AdaptiveClippingOptions::new(0.0, 3).initial_clipping_norm
    );
}
