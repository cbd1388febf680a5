//! [`NumPyClient`]: a client over decoded arrays, and its [`Client`] adapter.

use std::fmt;

use flower_core::{
    ndarrays_to_parameters, parameters_to_ndarrays, Code, Config, EvaluateIns, EvaluateRes, FitIns,
    FitRes, GetParametersIns, GetParametersRes, GetPropertiesIns, GetPropertiesRes, Metrics,
    NdArray, Parameters, Properties, Status,
};

use crate::client::{not_implemented, Client};

/// The error type of [`NumPyClient`] methods: any error, boxed.
///
/// `?` converts any `std::error::Error + Send + Sync` (and `anyhow::Error`)
/// into it, and so does `.into()` on a `String` or `&str`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Returned by the default [`NumPyClient`] methods. The adapter answers it
/// with the matching `*_NOT_IMPLEMENTED` code and Python's message
/// (``Client does not implement `fit` ``).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NotImplemented;

impl fmt::Display for NotImplemented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not implemented")
    }
}

impl std::error::Error for NotImplemented {}

/// A Flower client over decoded arrays, like Python's `flwr.client.NumPyClient`.
///
/// Parameters arrive and leave as [`NdArray`]s, in model order; the adapter
/// ([`to_client`](NumPyClient::to_client)) does the `.npy` encoding that
/// Python's `ndarrays_to_parameters` / `parameters_to_ndarrays` do.
///
/// Every method has a default returning [`NotImplemented`], which the
/// adapter reports exactly as Python reports a method the `NumPyClient`
/// subclass does not override.
///
/// # Errors become a failed reply, not a dead client
///
/// An `Err` from a method (or parameters from the server that do not decode)
/// is sent to the server as the reply's [`Status`] with a non-OK code and
/// the error's message, and the client stays connected for the next round.
/// The Python server counts any reply whose code is not `OK` as a failure
/// of that client for the round (`server.py`, `_handle_finished_future_after_fit`).
/// Flower's schema defines no generic error code, so the code used is the
/// method's own `*_NOT_IMPLEMENTED` code, the only non-OK values every Flower
/// server can decode:
///
/// | method           | code on error                        |
/// |------------------|--------------------------------------|
/// | `get_properties` | `GET_PROPERTIES_NOT_IMPLEMENTED` (1) |
/// | `get_parameters` | `GET_PARAMETERS_NOT_IMPLEMENTED` (2) |
/// | `fit`            | `FIT_NOT_IMPLEMENTED` (3)            |
/// | `evaluate`       | `EVALUATE_NOT_IMPLEMENTED` (4)       |
///
/// The status message tells the cases apart: ``Client does not implement
/// `fit` `` for a missing method, `fit failed: <error>` for an error, and
/// `could not decode the server's parameters: <error>` for bad tensors.
/// (Python's own client instead crashes when user code raises.)
///
/// # Example
///
/// ```
/// use flower_client::{BoxError, NumPyClient};
/// use flower_core::{Config, Metrics, NdArray};
///
/// /// Adds 0.1 to every float32 weight on each fit.
/// struct Nudge;
///
/// impl NumPyClient for Nudge {
///     fn fit(&mut self, parameters: Vec<NdArray>, _config: &Config)
///         -> Result<(Vec<NdArray>, u64, Metrics), BoxError>
///     {
///         let updated = parameters
///             .into_iter()
///             .map(|p| match p {
///                 NdArray::F32(a) => Ok(NdArray::F32(a + 0.1)),
///                 other => Err(format!("expected float32, got {:?}", other.dtype())),
///             })
///             .collect::<Result<Vec<_>, _>>()?;
///         Ok((updated, 10, Metrics::new()))
///     }
/// }
///
/// let client = Nudge.to_client(); // implements flower_client::Client
/// # let _ = client;
/// ```
pub trait NumPyClient {
    /// The client's properties (`properties` of `GetPropertiesRes`).
    fn get_properties(&mut self, config: &Config) -> Result<Properties, BoxError> {
        let _ = config;
        Err(NotImplemented.into())
    }

    /// The client's current parameters, in model order.
    fn get_parameters(&mut self, config: &Config) -> Result<Vec<NdArray>, BoxError> {
        let _ = config;
        Err(NotImplemented.into())
    }

    /// Trains on `parameters`; returns the updated parameters, the number of
    /// training examples (FedAvg's weight) and metrics.
    fn fit(
        &mut self,
        parameters: Vec<NdArray>,
        config: &Config,
    ) -> Result<(Vec<NdArray>, u64, Metrics), BoxError> {
        let _ = (parameters, config);
        Err(NotImplemented.into())
    }

    /// Evaluates `parameters`; returns the loss (sent as `f32`, as the schema
    /// says), the number of evaluation examples and metrics.
    fn evaluate(
        &mut self,
        parameters: Vec<NdArray>,
        config: &Config,
    ) -> Result<(f64, u64, Metrics), BoxError> {
        let _ = (parameters, config);
        Err(NotImplemented.into())
    }

    /// Wraps the client into a [`Client`], like Python's `NumPyClient.to_client()`.
    fn to_client(self) -> NumPyClientAdapter<Self>
    where
        Self: Sized,
    {
        NumPyClientAdapter::new(self)
    }
}

/// The [`Client`] built by [`NumPyClient::to_client`].
#[derive(Debug, Clone, Default)]
pub struct NumPyClientAdapter<N> {
    inner: N,
}

impl<N> NumPyClientAdapter<N> {
    /// Wraps `inner`.
    pub fn new(inner: N) -> Self {
        Self { inner }
    }
    /// The wrapped client.
    pub fn get_ref(&self) -> &N {
        &self.inner
    }
    /// The wrapped client, mutably.
    pub fn get_mut(&mut self) -> &mut N {
        &mut self.inner
    }
    /// Unwraps the client.
    pub fn into_inner(self) -> N {
        self.inner
    }
}

/// The status for an error returned by method `method` (see the table on
/// [`NumPyClient`]).
fn error_status(code: Code, method: &str, err: &BoxError) -> Status {
    if err.is::<NotImplemented>() {
        return not_implemented(code, method);
    }
    tracing::warn!(method, error = %err, "client method failed; reporting a non-OK status");
    Status {
        code,
        message: format!("{method} failed: {err}"),
    }
}

fn decode_status(code: Code, method: &str, err: &dyn fmt::Display) -> Status {
    tracing::warn!(method, error = %err, "could not decode the server's parameters");
    Status {
        code,
        message: format!("could not decode the server's parameters: {err}"),
    }
}

/// Decodes the server's tensors. No tensors decode to no arrays whatever the
/// `tensor_type` (Python's `parameters_to_ndarrays` never looks at it; a
/// server whose `get_parameters` failed sends `tensor_type = ""`).
fn decode(parameters: &Parameters) -> Result<Vec<NdArray>, flower_core::CodecError> {
    if parameters.tensors.is_empty() {
        return Ok(Vec::new());
    }
    parameters_to_ndarrays(parameters)
}

/// Converts a Rust example count to the schema's `int64`.
fn examples(method: &str, n: u64) -> Result<i64, BoxError> {
    i64::try_from(n)
        .map_err(|_| format!("{method} returned num_examples {n}, above i64::MAX").into())
}

impl<N: NumPyClient> Client for NumPyClientAdapter<N> {
    fn get_properties(&mut self, ins: GetPropertiesIns) -> GetPropertiesRes {
        const CODE: Code = Code::GetPropertiesNotImplemented;
        match self.inner.get_properties(&ins.config) {
            Ok(properties) => GetPropertiesRes {
                status: Status::success(),
                properties,
            },
            Err(e) => GetPropertiesRes {
                status: error_status(CODE, "get_properties", &e),
                properties: Properties::new(),
            },
        }
    }

    fn get_parameters(&mut self, ins: GetParametersIns) -> GetParametersRes {
        const CODE: Code = Code::GetParametersNotImplemented;
        match self.inner.get_parameters(&ins.config) {
            Ok(arrays) => GetParametersRes {
                status: Status::success(),
                parameters: ndarrays_to_parameters(&arrays),
            },
            Err(e) => GetParametersRes {
                status: error_status(CODE, "get_parameters", &e),
                parameters: Parameters::default(),
            },
        }
    }

    fn fit(&mut self, ins: FitIns) -> FitRes {
        const CODE: Code = Code::FitNotImplemented;
        let failed = |status| FitRes {
            status,
            parameters: Parameters::default(),
            num_examples: 0,
            metrics: Metrics::new(),
        };
        let arrays = match decode(&ins.parameters) {
            Ok(a) => a,
            Err(e) => return failed(decode_status(CODE, "fit", &e)),
        };
        drop(ins.parameters);
        let result = self
            .inner
            .fit(arrays, &ins.config)
            .and_then(|(arrays, n, metrics)| Ok((arrays, examples("fit", n)?, metrics)));
        match result {
            Ok((arrays, num_examples, metrics)) => FitRes {
                status: Status::success(),
                parameters: ndarrays_to_parameters(&arrays),
                num_examples,
                metrics,
            },
            Err(e) => failed(error_status(CODE, "fit", &e)),
        }
    }

    fn evaluate(&mut self, ins: EvaluateIns) -> EvaluateRes {
        const CODE: Code = Code::EvaluateNotImplemented;
        let failed = |status| EvaluateRes {
            status,
            loss: 0.0,
            num_examples: 0,
            metrics: Metrics::new(),
        };
        let arrays = match decode(&ins.parameters) {
            Ok(a) => a,
            Err(e) => return failed(decode_status(CODE, "evaluate", &e)),
        };
        drop(ins.parameters);
        let result = self
            .inner
            .evaluate(arrays, &ins.config)
            .and_then(|(loss, n, metrics)| Ok((loss, examples("evaluate", n)?, metrics)));
        match result {
            Ok((loss, num_examples, metrics)) => EvaluateRes {
                status: Status::success(),
                // The schema's `loss` is a 32-bit float; Python rounds the same way.
                loss: loss as f32,
                num_examples,
                metrics,
            },
            Err(e) => failed(error_status(CODE, "evaluate", &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing;
    impl NumPyClient for Failing {
        fn fit(
            &mut self,
            _parameters: Vec<NdArray>,
            _config: &Config,
        ) -> Result<(Vec<NdArray>, u64, Metrics), BoxError> {
            Err("out of memory".into())
        }
    }

    #[test]
    fn errors_become_non_ok_status_with_message() {
        let mut c = Failing.to_client();
        let res = Client::fit(&mut c, FitIns::default());
        assert_eq!(res.status.code, Code::FitNotImplemented);
        assert_eq!(res.status.message, "fit failed: out of memory");
    }

    #[test]
    fn missing_methods_answer_like_python() {
        let mut c = Failing.to_client();
        let res = Client::evaluate(&mut c, EvaluateIns::default());
        assert_eq!(res.status.code, Code::EvaluateNotImplemented);
        assert_eq!(res.status.message, "Client does not implement `evaluate`");
    }

    #[test]
    fn undecodable_parameters_become_non_ok_status() {
        let mut c = Failing.to_client();
        let ins = FitIns {
            parameters: Parameters {
                tensors: vec![b"definitely not npy".to_vec().into()],
                tensor_type: "numpy.ndarray".into(),
            },
            config: Config::new(),
        };
        let res = Client::fit(&mut c, ins);
        assert_eq!(res.status.code, Code::FitNotImplemented);
        assert!(
            res.status
                .message
                .starts_with("could not decode the server's parameters"),
            "{}",
            res.status.message
        );
    }
}
