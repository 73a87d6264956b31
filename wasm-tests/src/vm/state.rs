//! Per-VM state, carried by the wasmi `Store`: the contexts of one worker, its streams with
//! their header maps and body buffers, its callouts, and which maps and buffers Envoy would
//! let the guest see at this moment.

use std::collections::BTreeMap;

use wasmi::{Memory, TypedFunc};

use crate::host::Host;
use crate::types::{Action, LocalReply, PendingCall, PendingGrpcCall, Status};

pub(crate) type Headers = Vec<(String, String)>;
pub(crate) type Properties = BTreeMap<Vec<String>, Vec<u8>>;

/// Where the root context is in its shutdown (`proxy_on_done` / `proxy_done`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shutdown {
    Running,
    /// `proxy_on_done` returned false: the guest will call `proxy_done` when drained.
    Draining,
    /// The guest called `proxy_done`; `proxy_on_delete` is due after the callback.
    Signalled,
    Done,
}

/// The response being delivered by `proxy_on_http_call_response`.
#[derive(Debug)]
pub(crate) struct CallResponse {
    pub(crate) headers: Headers,
    pub(crate) body: Vec<u8>,
    pub(crate) trailers: Headers,
}

#[derive(Debug)]
pub(crate) struct Calls {
    pub(crate) last_token: u32,
    pub(crate) pending: BTreeMap<u32, PendingCall>,
    pub(crate) response: Option<CallResponse>,
    /// Unary gRPC calls waiting for the test; tokens are shared with HTTP callouts.
    pub(crate) grpc_pending: BTreeMap<u32, PendingGrpcCall>,
    /// The answer being delivered by `proxy_on_grpc_receive` (buffer type 5).
    pub(crate) grpc_response: Option<Vec<u8>>,
    /// What `proxy_get_status` reports: Envoy sets `BrokenConnection`/"reset" while a failed
    /// callout is delivered.
    pub(crate) status: (u32, String),
}

/// One direction (request or response) of a stream.
///
/// `*_live` mirrors Envoy's pointers: headers are reachable during their callback, and
/// afterwards only if the filter paused (until it continues); the body buffer is the chunk
/// being delivered, or everything buffered so far after a `Pause`.
#[derive(Debug, Default)]
pub(crate) struct Direction {
    pub(crate) headers: Headers,
    pub(crate) headers_seen: bool,
    pub(crate) headers_live: bool,
    pub(crate) trailers: Headers,
    pub(crate) trailers_seen: bool,
    pub(crate) trailers_live: bool,
    pub(crate) body: Vec<u8>,
    pub(crate) body_live: bool,
    pub(crate) buffering: bool,
    /// What went on past the filter (upstream for requests, to the client for responses).
    pub(crate) forwarded: Vec<u8>,
}

impl Direction {
    pub(crate) fn begin_headers(&mut self, headers: Headers) {
        self.headers = headers;
        self.headers_seen = true;
        self.headers_live = true;
    }

    pub(crate) fn end_headers(&mut self, action: Action) {
        if action == Action::Continue {
            self.headers_live = false;
        }
    }

    /// Envoy appends a chunk to what the filter buffered by pausing, and shows the whole.
    pub(crate) fn begin_body(&mut self, chunk: &[u8]) {
        if self.buffering {
            self.body.extend_from_slice(chunk);
        } else {
            self.body = chunk.to_vec();
        }
        self.body_live = true;
    }

    pub(crate) fn end_body(&mut self, action: Action) {
        self.buffering = false;
        match action {
            Action::Continue => self.forward_body(),
            Action::Pause => self.buffering = true,
            Action::Other(_) => {}
        }
    }

    pub(crate) fn begin_trailers(&mut self, trailers: Headers) {
        self.trailers = trailers;
        self.trailers_seen = true;
        self.trailers_live = true;
    }

    pub(crate) fn end_trailers(&mut self, action: Action) {
        if action == Action::Continue {
            self.trailers_live = false;
        }
    }

    /// `proxy_continue_stream`: what was held is released.
    pub(crate) fn resume(&mut self) {
        if self.buffering || self.body_live {
            self.forward_body();
        }
        self.buffering = false;
    }

    fn forward_body(&mut self) {
        let body = std::mem::take(&mut self.body);
        self.forwarded.extend_from_slice(&body);
        self.body_live = false;
    }
}

#[derive(Debug, Default)]
pub(crate) struct StreamState {
    pub(crate) properties: Properties,
    pub(crate) request: Direction,
    pub(crate) response: Direction,
    pub(crate) local_replies: Vec<LocalReply>,
    pub(crate) continued_request: u32,
    pub(crate) continued_response: u32,
    pub(crate) reset_request: bool,
    pub(crate) reset_response: bool,
    /// `proxy_on_delete` ran; the state stays for the test to inspect.
    pub(crate) deleted: bool,
}

/// The data of one VM's wasmi `Store`.
#[derive(Debug)]
pub(crate) struct VmState {
    pub(crate) host: Host,
    pub(crate) index: usize,
    pub(crate) memory: Option<Memory>,
    pub(crate) allocate: Option<TypedFunc<i32, i32>>,
    pub(crate) root_id: u32,
    pub(crate) next_context_id: u32,
    /// The context host calls act on: the one being called back, or the one the guest
    /// chose with `proxy_set_effective_context`.
    pub(crate) effective: u32,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) plugin_config: Vec<u8>,
    /// Envoy serves the plugin configuration only while `proxy_on_configure` runs.
    pub(crate) configuring: bool,
    pub(crate) in_log_phase: bool,
    pub(crate) tick_period_ms: u32,
    pub(crate) properties: Properties,
    pub(crate) streams: BTreeMap<u32, StreamState>,
    pub(crate) calls: Calls,
    pub(crate) shutdown: Shutdown,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
}

/// Map types of the ABI (`MapType` in the SDK).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MapKind {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    Grpc,
    CallHeaders,
    CallTrailers,
}

fn map_kind(map_type: i32) -> Result<MapKind, Status> {
    Ok(match map_type {
        0 => MapKind::RequestHeaders,
        1 => MapKind::RequestTrailers,
        2 => MapKind::ResponseHeaders,
        3 => MapKind::ResponseTrailers,
        4 | 5 => MapKind::Grpc,
        6 => MapKind::CallHeaders,
        7 => MapKind::CallTrailers,
        _ => return Err(Status::BadArgument),
    })
}

const EMPTY: &[u8] = &[];

impl VmState {
    pub(crate) fn new(
        host: Host,
        index: usize,
        vm_config: Vec<u8>,
        plugin_config: Vec<u8>,
        properties: Properties,
    ) -> VmState {
        // Context ids start at 1 in Envoy; 0 means "no parent" in proxy_on_context_create.
        let root_id = 1;
        VmState {
            host,
            index,
            memory: None,
            allocate: None,
            root_id,
            next_context_id: root_id + 1,
            effective: root_id,
            vm_config,
            plugin_config,
            configuring: false,
            in_log_phase: false,
            tick_period_ms: 0,
            properties,
            streams: BTreeMap::new(),
            calls: Calls {
                last_token: 0,
                pending: BTreeMap::new(),
                response: None,
                grpc_pending: BTreeMap::new(),
                grpc_response: None,
                status: (0, String::new()),
            },
            shutdown: Shutdown::Running,
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }

    pub(crate) fn is_live_context(&self, id: u32) -> bool {
        id == self.root_id || self.streams.get(&id).is_some_and(|s| !s.deleted)
    }

    pub(crate) fn current_stream(&self) -> Option<&StreamState> {
        self.streams.get(&self.effective).filter(|s| !s.deleted)
    }

    pub(crate) fn current_stream_mut(&mut self) -> Option<&mut StreamState> {
        self.streams.get_mut(&self.effective).filter(|s| !s.deleted)
    }

    /// A map for reading. `Ok(None)`: Envoy has no such map right now (pairs read as empty,
    /// a single value is `BadArgument`, or `NotFound` in the log phase).
    pub(crate) fn read_map(&self, map_type: i32) -> Result<Option<&Headers>, Status> {
        let kind = map_kind(map_type)?;
        let response = self.calls.response.as_ref();
        Ok(match kind {
            MapKind::CallHeaders => response.map(|r| &r.headers),
            MapKind::CallTrailers => response.map(|r| &r.trailers),
            MapKind::Grpc => None,
            _ => {
                let Some(stream) = self.current_stream() else {
                    return Ok(None);
                };
                let (request, response) = (&stream.request, &stream.response);
                // In the log phase Envoy shows the final maps, read-only, whatever the
                // filter returned; request trailers are not among them.
                let (map, visible) = match (kind, self.in_log_phase) {
                    (MapKind::RequestHeaders, true) => (&request.headers, request.headers_seen),
                    (MapKind::ResponseHeaders, true) => (&response.headers, response.headers_seen),
                    (MapKind::ResponseTrailers, true) => {
                        (&response.trailers, response.trailers_seen)
                    }
                    (MapKind::RequestTrailers, true) => (&request.trailers, false),
                    (MapKind::RequestHeaders, false) => (&request.headers, request.headers_live),
                    (MapKind::RequestTrailers, false) => (&request.trailers, request.trailers_live),
                    (MapKind::ResponseHeaders, false) => (&response.headers, response.headers_live),
                    _ => (&response.trailers, response.trailers_live),
                };
                visible.then_some(map)
            }
        })
    }

    /// A map for writing: only a stream's live maps are mutable (`BadArgument` otherwise).
    pub(crate) fn write_map(&mut self, map_type: i32) -> Result<&mut Headers, Status> {
        let kind = map_kind(map_type)?;
        let stream = self.current_stream_mut().ok_or(Status::BadArgument)?;
        let (map, live) = match kind {
            MapKind::RequestHeaders => (&mut stream.request.headers, stream.request.headers_live),
            MapKind::RequestTrailers => {
                (&mut stream.request.trailers, stream.request.trailers_live)
            }
            MapKind::ResponseHeaders => {
                (&mut stream.response.headers, stream.response.headers_live)
            }
            MapKind::ResponseTrailers => {
                (&mut stream.response.trailers, stream.response.trailers_live)
            }
            MapKind::Grpc | MapKind::CallHeaders | MapKind::CallTrailers => {
                return Err(Status::BadArgument)
            }
        };
        if live {
            Ok(map)
        } else {
            Err(Status::BadArgument)
        }
    }

    /// A buffer for reading, as Envoy's `getBuffer`: `Ok(None)` is `NotFound`; a buffer
    /// with nothing behind it reads as empty.
    pub(crate) fn read_buffer(&self, buffer_type: i32) -> Result<Option<&[u8]>, Status> {
        Ok(match buffer_type {
            0 | 1 => {
                let direction = self.current_stream().map(|s| {
                    if buffer_type == 0 {
                        &s.request
                    } else {
                        &s.response
                    }
                });
                match direction {
                    Some(direction) if direction.body_live => Some(direction.body.as_slice()),
                    _ => Some(EMPTY),
                }
            }
            2 | 3 | 8 => Some(EMPTY),
            4 => self.calls.response.as_ref().map(|r| r.body.as_slice()),
            5 => Some(self.calls.grpc_response.as_deref().unwrap_or(EMPTY)),
            6 => Some(self.vm_config.as_slice()),
            7 => self.configuring.then_some(self.plugin_config.as_slice()),
            _ => return Err(Status::BadArgument),
        })
    }

    /// `proxy_set_buffer_bytes` with Envoy's rules: at 0 with size 0 prepends, at 0 with
    /// size >= length replaces, at or past the end appends; anything else is `BadArgument`.
    pub(crate) fn write_buffer(
        &mut self,
        buffer_type: i32,
        start: usize,
        size: usize,
        data: &[u8],
    ) -> Status {
        let body = match buffer_type {
            0 | 1 => {
                let Some(stream) = self.current_stream_mut() else {
                    return Status::Unimplemented;
                };
                let direction = if buffer_type == 0 {
                    &mut stream.request
                } else {
                    &mut stream.response
                };
                if !direction.body_live {
                    return Status::Unimplemented;
                }
                &mut direction.body
            }
            2 | 3 | 5 | 8 => return Status::Unimplemented,
            _ => return Status::BadArgument,
        };

        if start == 0 && size == 0 {
            body.splice(0..0, data.iter().copied());
        } else if start == 0 && size >= body.len() {
            body.clear();
            body.extend_from_slice(data);
        } else if start >= body.len() {
            body.extend_from_slice(data);
        } else {
            return Status::BadArgument;
        }
        Status::Ok
    }

    /// A property: the stream's own first, then the VM's.
    pub(crate) fn property(&self, path: &[String]) -> Option<&[u8]> {
        self.current_stream()
            .and_then(|s| s.properties.get(path))
            .or_else(|| self.properties.get(path))
            .map(Vec::as_slice)
    }

    pub(crate) fn next_call_token(&mut self) -> u32 {
        loop {
            self.calls.last_token = self.calls.last_token.wrapping_add(1);
            let token = self.calls.last_token;
            let taken = self.calls.pending.contains_key(&token)
                || self.calls.grpc_pending.contains_key(&token);
            if token != 0 && !taken {
                return token;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paused_body_accumulates_and_continue_forwards() {
        let mut dir = Direction::default();
        dir.begin_body(b"ab");
        dir.end_body(Action::Pause);
        dir.begin_body(b"cd");
        assert_eq!(dir.body, b"abcd");
        dir.end_body(Action::Continue);
        assert_eq!(dir.forwarded, b"abcd");
        assert!(!dir.body_live);

        dir.begin_body(b"ef");
        assert_eq!(dir.body, b"ef");
        dir.end_body(Action::Pause);
        dir.resume();
        assert_eq!(dir.forwarded, b"abcdef");
    }

    #[test]
    fn headers_stay_reachable_only_while_paused() {
        let mut dir = Direction::default();
        dir.begin_headers(vec![("a".into(), "1".into())]);
        dir.end_headers(Action::Pause);
        assert!(dir.headers_live);
        dir.begin_headers(vec![]);
        dir.end_headers(Action::Continue);
        assert!(!dir.headers_live);
        assert!(dir.headers_seen);
    }
}
