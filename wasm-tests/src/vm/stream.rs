//! An HTTP stream seen by the filter: the test delivers headers, body chunks and trailers
//! as Envoy would, then reads back what the filter let through or replied.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::state::{Direction, StreamState};
use super::{abi, len_arg, owned_path, VmInner};
use crate::error::Error;
use crate::types::{find_header, owned_headers, Action, LocalReply};

/// A handle on one HTTP context of a [`super::Vm`]. Cheap to clone.
#[derive(Clone)]
pub struct HttpStream {
    vm: Arc<Mutex<VmInner>>,
    id: u32,
}

impl std::fmt::Debug for HttpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStream").field("id", &self.id).finish()
    }
}

#[derive(Clone, Copy)]
enum Side {
    Request,
    Response,
}

impl HttpStream {
    pub(crate) fn new(vm: Arc<Mutex<VmInner>>, id: u32) -> HttpStream {
        HttpStream { vm, id }
    }

    /// The context id (pending callouts dispatched by this stream carry it).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// A property only this stream sees, e.g. `&["source", "address"]`.
    pub fn set_property(&self, path: &[&str], value: impl AsRef<[u8]>) -> Result<(), Error> {
        let mut vm = self.lock();
        let stream = live_stream(&mut vm, self.id)?;
        stream
            .properties
            .insert(owned_path(path), value.as_ref().to_vec());
        Ok(())
    }

    // Delivery, in the order Envoy calls the filter.

    pub fn request_headers(
        &self,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action, Error> {
        self.headers(Side::Request, headers, end_of_stream)
    }

    pub fn request_body(&self, chunk: &[u8], end_of_stream: bool) -> Result<Action, Error> {
        self.body(Side::Request, chunk, end_of_stream)
    }

    pub fn request_trailers(&self, trailers: &[(&str, &str)]) -> Result<Action, Error> {
        self.trailers(Side::Request, trailers)
    }

    pub fn response_headers(
        &self,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action, Error> {
        self.headers(Side::Response, headers, end_of_stream)
    }

    pub fn response_body(&self, chunk: &[u8], end_of_stream: bool) -> Result<Action, Error> {
        self.body(Side::Response, chunk, end_of_stream)
    }

    pub fn response_trailers(&self, trailers: &[(&str, &str)]) -> Result<Action, Error> {
        self.trailers(Side::Response, trailers)
    }

    /// `proxy_on_log`: the access-log phase. The final request and response headers (and
    /// response trailers) are readable, whatever the filter returned earlier.
    pub fn log(&self) -> Result<(), Error> {
        let mut vm = self.lock();
        live_stream(&mut vm, self.id)?;
        vm.state_mut().in_log_phase = true;
        let result = vm.invoke("proxy_on_log", self.id, &[abi(self.id)]);
        vm.state_mut().in_log_phase = false;
        result.map(|_| ())
    }

    /// `proxy_on_done` then `proxy_on_delete`. Callouts and gRPC calls this stream still
    /// awaits are cancelled, as Envoy does when the context goes. The stream stays inspectable.
    pub fn done(&self) -> Result<(), Error> {
        let mut vm = self.lock();
        live_stream(&mut vm, self.id)?;
        vm.invoke("proxy_on_done", self.id, &[abi(self.id)])?;
        vm.invoke("proxy_on_delete", self.id, &[abi(self.id)])?;
        let id = self.id;
        let state = vm.state_mut();
        state.calls.pending.retain(|_, call| call.context_id != id);
        state
            .calls
            .grpc_pending
            .retain(|_, call| call.context_id != id);
        if let Some(stream) = state.streams.get_mut(&id) {
            stream.deleted = true;
        }
        Ok(())
    }

    /// `log()` then `done()`: how a stream ends in Envoy.
    pub fn finish(&self) -> Result<(), Error> {
        self.log()?;
        self.done()
    }

    // Inspection.

    /// The request headers as they stand after the filter (what the upstream gets).
    pub fn request_header_map(&self) -> Vec<(String, String)> {
        self.read(|s| s.request.headers.clone())
    }

    pub fn request_header(&self, name: &str) -> Option<String> {
        self.read(|s| find_header(&s.request.headers, name).map(str::to_owned))
    }

    pub fn request_trailer_map(&self) -> Vec<(String, String)> {
        self.read(|s| s.request.trailers.clone())
    }

    /// The response headers as they stand after the filter (what the client gets).
    pub fn response_header_map(&self) -> Vec<(String, String)> {
        self.read(|s| s.response.headers.clone())
    }

    pub fn response_header(&self, name: &str) -> Option<String> {
        self.read(|s| find_header(&s.response.headers, name).map(str::to_owned))
    }

    pub fn response_trailer_map(&self) -> Vec<(String, String)> {
        self.read(|s| s.response.trailers.clone())
    }

    /// Request body bytes the filter let through, with its changes.
    pub fn forwarded_request_body(&self) -> Vec<u8> {
        self.read(|s| s.request.forwarded.clone())
    }

    /// Response body bytes the filter let through, with its changes.
    pub fn forwarded_response_body(&self) -> Vec<u8> {
        self.read(|s| s.response.forwarded.clone())
    }

    /// The first local reply the filter sent (the one the client gets).
    pub fn local_reply(&self) -> Option<LocalReply> {
        self.read(|s| s.local_replies.first().cloned())
    }

    pub fn local_replies(&self) -> Vec<LocalReply> {
        self.read(|s| s.local_replies.clone())
    }

    /// How many times the filter called `proxy_continue_stream` for the request.
    pub fn continued_request(&self) -> u32 {
        self.read(|s| s.continued_request)
    }

    pub fn continued_response(&self) -> u32 {
        self.read(|s| s.continued_response)
    }

    /// Whether the filter reset the request (`proxy_close_stream`).
    pub fn reset_request(&self) -> bool {
        self.read(|s| s.reset_request)
    }

    pub fn reset_response(&self) -> bool {
        self.read(|s| s.reset_response)
    }

    fn headers(&self, side: Side, headers: &[(&str, &str)], eos: bool) -> Result<Action, Error> {
        let callback = match side {
            Side::Request => "proxy_on_request_headers",
            Side::Response => "proxy_on_response_headers",
        };
        let map = owned_headers(headers);
        let begin = |d: &mut Direction| {
            let count = map.len();
            d.begin_headers(map);
            count
        };
        self.deliver(side, callback, Some(eos), begin, Direction::end_headers)
    }

    fn body(&self, side: Side, chunk: &[u8], eos: bool) -> Result<Action, Error> {
        let callback = match side {
            Side::Request => "proxy_on_request_body",
            Side::Response => "proxy_on_response_body",
        };
        // After a pause the guest sees everything buffered, so the size is the total.
        let begin = |d: &mut Direction| {
            d.begin_body(chunk);
            d.body.len()
        };
        self.deliver(side, callback, Some(eos), begin, Direction::end_body)
    }

    fn trailers(&self, side: Side, trailers: &[(&str, &str)]) -> Result<Action, Error> {
        let callback = match side {
            Side::Request => "proxy_on_request_trailers",
            Side::Response => "proxy_on_response_trailers",
        };
        let map = owned_headers(trailers);
        let begin = |d: &mut Direction| {
            let count = map.len();
            d.begin_trailers(map);
            count
        };
        self.deliver(side, callback, None, begin, Direction::end_trailers)
    }

    /// Prepares the direction, calls back with `(context, size[, end_of_stream])`, and
    /// records what the returned action means.
    fn deliver(
        &self,
        side: Side,
        callback: &str,
        end_of_stream: Option<bool>,
        begin: impl FnOnce(&mut Direction) -> usize,
        end: impl FnOnce(&mut Direction, Action),
    ) -> Result<Action, Error> {
        let mut vm = self.lock();
        let size = begin(direction(live_stream(&mut vm, self.id)?, side));
        let mut args = vec![abi(self.id), len_arg(size)];
        args.extend(end_of_stream.map(i32::from));
        let action = vm
            .invoke(callback, self.id, &args)?
            .map_or(Action::Continue, Action::from_abi);
        if let Ok(stream) = live_stream(&mut vm, self.id) {
            end(direction(stream, side), action);
        }
        Ok(action)
    }

    fn read<T>(&self, f: impl FnOnce(&StreamState) -> T) -> T
    where
        T: Default,
    {
        let vm = self.lock();
        vm.state().streams.get(&self.id).map(f).unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, VmInner> {
        self.vm.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn live_stream(vm: &mut VmInner, id: u32) -> Result<&mut StreamState, Error> {
    match vm.state_mut().streams.get_mut(&id) {
        Some(stream) if !stream.deleted => Ok(stream),
        Some(_) => Err(Error::Usage(format!("stream {id} is done"))),
        None => Err(Error::Usage(format!("no stream {id}"))),
    }
}

fn direction(stream: &mut StreamState, side: Side) -> &mut Direction {
    match side {
        Side::Request => &mut stream.request,
        Side::Response => &mut stream.response,
    }
}
