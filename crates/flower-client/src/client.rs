//! The low-level [`Client`] trait over Flower's typed Ins/Res messages.

use std::sync::{Arc, Mutex};

use flower_core::{
    ClientMessage, Code, DisconnectRes, EvaluateIns, EvaluateRes, FitIns, FitRes, GetParametersIns,
    GetParametersRes, GetPropertiesIns, GetPropertiesRes, Metrics, Parameters, Properties, Reason,
    ServerMessage, Status,
};

/// A Flower client at the level of the protocol's typed messages, like
/// Python's `flwr.client.Client`.
///
/// Every method has a default that answers the matching `*_NOT_IMPLEMENTED`
/// status code with the same message Python's `Client` base class sends
/// (``Client does not implement `fit` ``, ...), so a client implements only
/// what it supports. Most users implement [`NumPyClient`](crate::NumPyClient)
/// instead and call [`to_client`](crate::NumPyClient::to_client).
///
/// Methods are synchronous: the driver runs each call on Tokio's blocking
/// thread pool, so CPU-heavy training does not stall the connection.
pub trait Client {
    /// Answers `GetPropertiesIns`.
    fn get_properties(&mut self, ins: GetPropertiesIns) -> GetPropertiesRes {
        let _ = ins;
        GetPropertiesRes {
            status: not_implemented(Code::GetPropertiesNotImplemented, "get_properties"),
            properties: Properties::new(),
        }
    }

    /// Answers `GetParametersIns` (sent once, to the first client, when the
    /// strategy has no initial parameters).
    fn get_parameters(&mut self, ins: GetParametersIns) -> GetParametersRes {
        let _ = ins;
        GetParametersRes {
            status: not_implemented(Code::GetParametersNotImplemented, "get_parameters"),
            parameters: Parameters::default(),
        }
    }

    /// Answers `FitIns`: trains on the global parameters.
    fn fit(&mut self, ins: FitIns) -> FitRes {
        let _ = ins;
        FitRes {
            status: not_implemented(Code::FitNotImplemented, "fit"),
            parameters: Parameters::default(),
            num_examples: 0,
            metrics: Metrics::new(),
        }
    }

    /// Answers `EvaluateIns`: evaluates the global parameters.
    fn evaluate(&mut self, ins: EvaluateIns) -> EvaluateRes {
        let _ = ins;
        EvaluateRes {
            status: not_implemented(Code::EvaluateNotImplemented, "evaluate"),
            loss: 0.0,
            num_examples: 0,
            metrics: Metrics::new(),
        }
    }
}

/// The status Python's `Client` base class answers for a method it lacks.
pub(crate) fn not_implemented(code: Code, method: &str) -> Status {
    Status {
        code,
        message: format!("Client does not implement `{method}`"),
    }
}

/// Computes the one reply to one server instruction, as Python's
/// `handle_legacy_message_from_msgtype` / `handle_control_message` do.
///
/// `ReconnectIns` is answered with `DisconnectRes{reason: RECONNECT}`, which is
/// what Python's client always sends; acting on it (closing the stream,
/// sleeping, rejoining) is the driver's job.
pub fn handle_message<C: Client + ?Sized>(client: &mut C, message: ServerMessage) -> ClientMessage {
    match message {
        ServerMessage::Reconnect(_) => ClientMessage::Disconnect(DisconnectRes {
            reason: Reason::Reconnect,
        }),
        ServerMessage::GetProperties(ins) => {
            ClientMessage::GetProperties(client.get_properties(ins))
        }
        ServerMessage::GetParameters(ins) => {
            ClientMessage::GetParameters(client.get_parameters(ins))
        }
        ServerMessage::Fit(ins) => ClientMessage::Fit(client.fit(ins)),
        ServerMessage::Evaluate(ins) => ClientMessage::Evaluate(client.evaluate(ins)),
    }
}

impl<C: Client + ?Sized> Client for &mut C {
    fn get_properties(&mut self, ins: GetPropertiesIns) -> GetPropertiesRes {
        (**self).get_properties(ins)
    }
    fn get_parameters(&mut self, ins: GetParametersIns) -> GetParametersRes {
        (**self).get_parameters(ins)
    }
    fn fit(&mut self, ins: FitIns) -> FitRes {
        (**self).fit(ins)
    }
    fn evaluate(&mut self, ins: EvaluateIns) -> EvaluateRes {
        (**self).evaluate(ins)
    }
}

impl<C: Client + ?Sized> Client for Box<C> {
    fn get_properties(&mut self, ins: GetPropertiesIns) -> GetPropertiesRes {
        (**self).get_properties(ins)
    }
    fn get_parameters(&mut self, ins: GetParametersIns) -> GetParametersRes {
        (**self).get_parameters(ins)
    }
    fn fit(&mut self, ins: FitIns) -> FitRes {
        (**self).fit(ins)
    }
    fn evaluate(&mut self, ins: EvaluateIns) -> EvaluateRes {
        (**self).evaluate(ins)
    }
}

/// Shared clients: keep an `Arc` clone to read the model after the run.
///
/// A poisoned mutex (an earlier call panicked) is used as is.
impl<C: Client + ?Sized> Client for Arc<Mutex<C>> {
    fn get_properties(&mut self, ins: GetPropertiesIns) -> GetPropertiesRes {
        lock(self).get_properties(ins)
    }
    fn get_parameters(&mut self, ins: GetParametersIns) -> GetParametersRes {
        lock(self).get_parameters(ins)
    }
    fn fit(&mut self, ins: FitIns) -> FitRes {
        lock(self).fit(ins)
    }
    fn evaluate(&mut self, ins: EvaluateIns) -> EvaluateRes {
        lock(self).evaluate(ins)
    }
}

fn lock<C: ?Sized>(m: &Mutex<C>) -> std::sync::MutexGuard<'_, C> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flower_core::ReconnectIns;

    struct Nothing;
    impl Client for Nothing {}

    #[test]
    fn defaults_answer_not_implemented_like_python() {
        let mut c = Nothing;
        match handle_message(&mut c, ServerMessage::Fit(FitIns::default())) {
            ClientMessage::Fit(res) => {
                assert_eq!(res.status.code, Code::FitNotImplemented);
                assert_eq!(res.status.message, "Client does not implement `fit`");
                assert_eq!(res.parameters.tensor_type, "");
            }
            other => panic!("unexpected {other:?}"),
        }
        match handle_message(&mut c, ServerMessage::Evaluate(EvaluateIns::default())) {
            ClientMessage::Evaluate(res) => {
                assert_eq!(res.status.code, Code::EvaluateNotImplemented)
            }
            other => panic!("unexpected {other:?}"),
        }
        match handle_message(
            &mut c,
            ServerMessage::GetParameters(GetParametersIns::default()),
        ) {
            ClientMessage::GetParameters(res) => {
                assert_eq!(res.status.code, Code::GetParametersNotImplemented)
            }
            other => panic!("unexpected {other:?}"),
        }
        match handle_message(
            &mut c,
            ServerMessage::GetProperties(GetPropertiesIns::default()),
        ) {
            ClientMessage::GetProperties(res) => {
                assert_eq!(res.status.code, Code::GetPropertiesNotImplemented)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn reconnect_is_answered_with_reason_reconnect() {
        let reply = handle_message(
            &mut Nothing,
            ServerMessage::Reconnect(ReconnectIns { seconds: 0 }),
        );
        assert_eq!(
            reply,
            ClientMessage::Disconnect(DisconnectRes {
                reason: Reason::Reconnect
            })
        );
    }
}
