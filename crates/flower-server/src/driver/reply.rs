//! Reply classification: is what came back from a client a usable result
//! of the expected kind, or a failure (and which)?

use flower_core::{ClientMessage, EvaluateRes, FitRes, GetParametersRes, ReplyKind, Status};

use crate::node::ExchangeError;

/// Why a client's reply is not a usable result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyFailure {
    /// The client answered with a non-OK status.
    #[error("{kind} status {code:?}: {message}")]
    Status {
        /// The reply kind.
        kind: ReplyKind,
        /// The status code.
        code: flower_core::Code,
        /// The status message.
        message: String,
    },
    /// The client answered with another kind of reply.
    #[error("expected {expected}, got {got}")]
    WrongKind {
        /// What was asked for.
        expected: ReplyKind,
        /// What came back.
        got: ReplyKind,
    },
    /// No reply (stream closed, timeout, protocol violation).
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
}

impl ReplyFailure {
    /// A short, stable name of the kind of failure (`status`, `wrong_kind`,
    /// `closed`, `timeout`, `protocol`, `unsupported`), for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ReplyFailure::Status { .. } => "status",
            ReplyFailure::WrongKind { .. } => "wrong_kind",
            ReplyFailure::Exchange(ExchangeError::Closed(_)) => "closed",
            ReplyFailure::Exchange(ExchangeError::Timeout(_)) => "timeout",
            ReplyFailure::Exchange(ExchangeError::Protocol(_)) => "protocol",
            ReplyFailure::Exchange(ExchangeError::Unsupported(_)) => "unsupported",
        }
    }
}

/// A reply type the driver waits for.
pub(crate) trait Reply: Sized {
    /// Its kind.
    const KIND: ReplyKind;
    /// The reply, when `message` is one.
    fn from_message(message: ClientMessage) -> Option<Self>;
    /// Its status.
    fn status(&self) -> &Status;
}

impl Reply for FitRes {
    const KIND: ReplyKind = ReplyKind::Fit;
    fn from_message(message: ClientMessage) -> Option<Self> {
        match message {
            ClientMessage::Fit(res) => Some(res),
            _ => None,
        }
    }
    fn status(&self) -> &Status {
        &self.status
    }
}

impl Reply for EvaluateRes {
    const KIND: ReplyKind = ReplyKind::Evaluate;
    fn from_message(message: ClientMessage) -> Option<Self> {
        match message {
            ClientMessage::Evaluate(res) => Some(res),
            _ => None,
        }
    }
    fn status(&self) -> &Status {
        &self.status
    }
}

impl Reply for GetParametersRes {
    const KIND: ReplyKind = ReplyKind::GetParameters;
    fn from_message(message: ClientMessage) -> Option<Self> {
        match message {
            ClientMessage::GetParameters(res) => Some(res),
            _ => None,
        }
    }
    fn status(&self) -> &Status {
        &self.status
    }
}

/// The reply of kind `R`, whatever its status.
pub(crate) fn expect_kind<R: Reply>(
    reply: Result<ClientMessage, ExchangeError>,
) -> Result<R, ReplyFailure> {
    let message = reply?;
    let got = message.kind();
    R::from_message(message).ok_or(ReplyFailure::WrongKind {
        expected: R::KIND,
        got,
    })
}

/// The reply of kind `R` with an OK status; anything else is a failure.
pub(crate) fn classify<R: Reply>(
    reply: Result<ClientMessage, ExchangeError>,
) -> Result<R, ReplyFailure> {
    let res: R = expect_kind(reply)?;
    if res.status().is_ok() {
        Ok(res)
    } else {
        Err(ReplyFailure::Status {
            kind: R::KIND,
            code: res.status().code,
            message: res.status().message.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flower_core::{Code, Parameters};
    use std::time::Duration;

    fn fit(code: Code) -> ClientMessage {
        ClientMessage::Fit(FitRes {
            status: Status {
                code,
                message: "why".into(),
            },
            parameters: Parameters::default(),
            num_examples: 1,
            metrics: Default::default(),
        })
    }

    #[test]
    fn ok_reply_of_the_expected_kind_is_a_result() {
        assert!(classify::<FitRes>(Ok(fit(Code::Ok))).is_ok());
    }

    #[test]
    fn non_ok_status_is_a_failure_with_the_old_wording() {
        let e = classify::<FitRes>(Ok(fit(Code::FitNotImplemented))).unwrap_err();
        assert_eq!(e.to_string(), "fit_res status FitNotImplemented: why");
        // Without the status check the result is usable (initial parameters).
        assert!(expect_kind::<FitRes>(Ok(fit(Code::FitNotImplemented))).is_ok());
    }

    #[test]
    fn wrong_kind_and_exchange_errors_are_failures() {
        let e = classify::<EvaluateRes>(Ok(fit(Code::Ok))).unwrap_err();
        assert_eq!(
            e,
            ReplyFailure::WrongKind {
                expected: ReplyKind::Evaluate,
                got: ReplyKind::Fit
            }
        );
        assert_eq!(e.to_string(), "expected evaluate_res, got fit_res");
        assert_eq!(e.reason(), "wrong_kind");
        let timeout = ExchangeError::Timeout(Duration::from_secs(2));
        let e = classify::<FitRes>(Err(timeout.clone())).unwrap_err();
        assert_eq!(e.to_string(), timeout.to_string());
    }
}
