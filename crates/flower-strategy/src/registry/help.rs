//! The catalog help text ([`catalog_help`]): every strategy with its
//! options, and each option's default rendered from the `Default` impls
//! (or `new` constructors) of the option structs.

use std::fmt::Write as _;

use super::{Entry, Family, ENTRIES};
use crate::FedAvgOptions;

/// One documented option.
pub(super) struct Opt {
    pub(super) name: &'static str,
    /// The default as shown in the help ("required", or rendered from the
    /// option struct's defaults).
    pub(super) default: fn() -> String,
    pub(super) help: &'static str,
}

pub(super) const fn opt(name: &'static str, default: fn() -> String, help: &'static str) -> Opt {
    Opt {
        name,
        default,
        help,
    }
}

/// A float as Python would write it (`1.0`, `0.2`, `1e-09` → `1e-9`).
pub(super) fn num(x: f64) -> String {
    format!("{x:?}")
}

pub(super) fn required() -> String {
    "required".into()
}

fn fedavg() -> FedAvgOptions {
    FedAvgOptions::default()
}

/// The minimum client counts: FedAvg's default, and the strategies whose
/// default differs.
fn min_clients() -> String {
    let few: Vec<&str> = ENTRIES
        .iter()
        .filter(|e| e.family == Family::FewClients)
        .map(|e| e.name)
        .collect();
    let d = fedavg();
    format!(
        "{} ({}: {})",
        d.min_fit_clients,
        Family::FewClients.defaults().min_fit_clients,
        few.join(", ")
    )
}

/// FedAvg's constructor arguments, taken by every strategy (wrappers pass
/// them on to the strategy they wrap).
pub(super) const COMMON: &[Opt] = &[
    opt(
        "fraction_fit",
        || num(fedavg().fraction_fit),
        "fraction of available clients sampled for fit",
    ),
    opt(
        "fraction_evaluate",
        || num(fedavg().fraction_evaluate),
        "fraction of available clients sampled for evaluate (0 disables it)",
    ),
    opt(
        "min_fit_clients",
        min_clients,
        "minimum number of clients sampled for fit",
    ),
    opt(
        "min_evaluate_clients",
        min_clients,
        "minimum number of clients sampled for evaluate",
    ),
    opt(
        "min_available_clients",
        min_clients,
        "clients that must be connected before a round starts",
    ),
    opt(
        "accept_failures",
        || fedavg().accept_failures.to_string(),
        "aggregate rounds that had failures",
    ),
    // The callbacks default to none: an empty config, metrics `{}`.
    opt(
        "fit_config",
        || "{}".into(),
        "table sent as fit config every round, plus server_round",
    ),
    opt(
        "evaluate_config",
        || "{}".into(),
        "table sent as evaluate config every round, plus server_round",
    ),
    opt(
        "fit_metrics",
        || "none".into(),
        "\"all\" or a list of fit metrics to average (weighted by num_examples)",
    ),
    opt(
        "evaluate_metrics",
        || "none".into(),
        "\"all\" or a list of evaluate metrics to average (weighted by num_examples)",
    ),
];

pub(super) fn help_line(out: &mut String, indent: &str, name: &str, default: &str, help: &str) {
    let head = format!("{indent}{name} = {default}");
    if head.chars().count() < 46 {
        let _ = writeln!(out, "{head:<46}{help}");
    } else {
        let _ = writeln!(out, "{head}\n{:<46}{help}", "");
    }
}

fn entry_help(out: &mut String, e: &Entry) {
    let _ = writeln!(out, "  {} ({}): {}", e.name, e.class, e.summary);
    for o in e.options {
        help_line(out, "    ", o.name, &(o.default)(), o.help);
    }
}

/// Every strategy with its options and defaults (for `--help`).
pub fn catalog_help() -> String {
    let mut out = String::from(
        "Strategies (Python Flower 1.42's legacy catalog). Select one by its registry name and set\n\
         options by their Flower keyword names. Every strategy also takes the common options; a\n\
         wrapper (dp-*, dpfedavg-*) passes them on to the strategy it wraps.\n\n\
         Common options:\n",
    );
    for o in COMMON {
        help_line(&mut out, "    ", o.name, &(o.default)(), o.help);
    }
    out.push_str("\nStrategies and their own options:\n");
    for e in ENTRIES {
        entry_help(&mut out, e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_everything() {
        let help = catalog_help();
        for e in ENTRIES {
            assert!(help.contains(e.name));
            for o in e.options {
                assert!(help.contains(o.name));
            }
        }
    }

    #[test]
    fn defaults_come_from_the_option_structs() {
        let help = catalog_help();
        let line = |name: &str| {
            help.lines()
                .find(|l| l.trim_start().starts_with(&format!("{name} = ")))
                .unwrap_or_else(|| panic!("no line for {name}"))
                .to_owned()
        };
        assert!(line("min_fit_clients").contains("2 (1: qfedavg, fault-tolerant-fedavg)"));
        assert!(line("fraction_fit").contains("= 1.0"));
        assert!(line("server_momentum").contains("= 0.0"));
        assert!(line("beta").contains("= 0.2"));
        assert!(line("q_param").contains("= 0.2"));
        assert!(line("proximal_mu").contains("= required"));
        // FedYogi's own defaults, not FedOpt's.
        assert!(help.contains("tau = 0.001"));
        assert!(help.contains("tau = 1e-9"));
    }
}
