//! Arbitrary bytes as a stream of API requests: parsed and framed as the
//! server does (pipelined requests, one after another), routed, and run
//! through the state machine over a VM that accepts everything, so
//! sequences reach every state. The same bytes are also parsed as a
//! response, the client's side. Nothing may panic, and a parsed request
//! must account for bytes it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::api::http::{parse_request, parse_response, Parsed};
use vmm::api::{
    ApiError, ApiRequest, Dispatcher, InitialState, SnapshotCreateParams, SnapshotLoadParams,
    VmConfig, VmController,
};

struct AcceptAll;

impl VmController for AcceptAll {
    fn start(&mut self, _: &VmConfig) -> Result<(), ApiError> {
        Ok(())
    }
    fn pause(&mut self) -> Result<(), ApiError> {
        Ok(())
    }
    fn resume(&mut self) -> Result<(), ApiError> {
        Ok(())
    }
    fn send_ctrl_alt_del(&mut self) -> Result<(), ApiError> {
        Ok(())
    }
    // No files are written or read: the fuzzer only drives the API.
    fn create_snapshot(&mut self, _: &SnapshotCreateParams) -> Result<(), ApiError> {
        Ok(())
    }
    fn load_snapshot(&mut self, _: &SnapshotLoadParams) -> Result<VmConfig, ApiError> {
        Ok(VmConfig::default())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut dispatcher = Dispatcher::new(AcceptAll, InitialState::AwaitingConfig, "fuzz");
    let mut rest = data;
    while let Ok(Parsed::Complete { message, consumed }) = parse_request(rest) {
        assert!(consumed > 0 && consumed <= rest.len());
        assert!(message.body.len() <= vmm::api::MAX_BODY_BYTES);
        if let Ok(req) = ApiRequest::parse(&message) {
            let _ = dispatcher.handle(req);
        }
        rest = &rest[consumed..];
    }
    if let Ok(Parsed::Complete { consumed, .. }) = parse_response(data) {
        assert!(consumed <= data.len());
    }
});
