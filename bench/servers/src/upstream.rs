//! The model server without a model: fixed answers in the OpenAI chat shape.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};

/// A small chat completion, as a model server sends one.
const COMPLETION: &str = concat!(
    r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1764800000,"#,
    r#""model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","#,
    r#""content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"#,
    r#""usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}"#
);

/// One content chunk of a stream: one token of text.
const CHUNK: &str = concat!(
    "data: ",
    r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1764800000,"#,
    r#""model":"bench-model","choices":[{"index":0,"delta":{"content":"tok "},"#,
    r#""finish_reason":null}]}"#,
    "\n\n"
);

/// The last events: the usage chunk that `stream_options.include_usage` asks for, and the end.
const USAGE_AND_DONE: &str = concat!(
    "data: ",
    r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1764800000,"#,
    r#""model":"bench-model","choices":[],"usage":{"prompt_tokens":12,"#,
    r#""completion_tokens":100000,"total_tokens":100012}}"#,
    "\n\ndata: [DONE]\n\n"
);

type Answer = Either<Full<Bytes>, Events>;

pub async fn handle(request: Request<Incoming>) -> Result<Response<Answer>, Infallible> {
    let events = request
        .headers()
        .get("x-bench-events")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // The request is read whole, as a model server would.
    let _ = request.into_body().collect().await;

    let (body, content_type) = match events {
        None => (
            Either::Left(Full::new(Bytes::from_static(COMPLETION.as_bytes()))),
            "application/json",
        ),
        Some(n) => (Either::Right(Events::new(n)), "text/event-stream"),
    };
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// `n` content chunks, then the usage and `[DONE]`. Between two events the body says it is
/// not ready (and wakes itself at once), so that the connection writes each event on its own
/// as a model server producing tokens does, rather than one large write.
pub struct Events {
    left: u64,
    finished: bool,
    yielded: bool,
}

impl Events {
    fn new(n: u64) -> Self {
        Events {
            left: n,
            finished: false,
            yielded: false,
        }
    }
}

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        if !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.yielded = false;
        let data = if self.left > 0 {
            self.left -= 1;
            CHUNK
        } else {
            self.finished = true;
            USAGE_AND_DONE
        };
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(data.as_bytes())))))
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}
