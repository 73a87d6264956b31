//! Per-tenant request and token limits as pure functions of time.
//!
//! Each limit is a bucket that holds at most one minute's allowance and refills continuously
//! at the configured rate (the generic cell rate algorithm, kept as "how full is it"): a
//! tenant with `rate_limit: 60` may send 60 requests at once, then one per second. Unlike a
//! fixed window, spending the whole limit at 11:59:59 leaves nothing for 12:00:00; unlike a
//! sliding-window counter, a client that keeps sending gets exactly its rate, not one less.
//! This is also how OpenAI describes its own limits, so `x-ratelimit-*` mean what clients of
//! OpenAI-compatible APIs expect.
//!
//! A request reserves one request and an estimate of its tokens. When the response is done,
//! `settle` replaces the estimate by the real figure: a surplus flows back into the bucket
//! (never past full: capacity that was already refilled is not granted twice), an excess is
//! charged even past the budget, and the tenant waits until the debt has drained (at most
//! ten minutes' worth of debt is kept, so a broken usage report cannot lock a tenant out
//! for good).
//!
//! Amounts are kept in millionths of a request or token so that refill between two
//! requests is not lost to rounding (each update rounds down by less than one millionth).

/// The period limits are expressed in.
pub const WINDOW_NS: u64 = 60_000_000_000;

const MICRO: u128 = 1_000_000;

/// The most a bucket can owe, in windows of refill: a model server that reports an absurd
/// figure locks its tenant out for at most this long, not for centuries.
const MAX_DEBT_WINDOWS: u128 = 10;
const STATE_VERSION: u8 = 2;
const ENCODED_LEN: usize = 1 + 3 * 8;

/// The configured limits of one tenant, per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub requests: u64,
    pub tokens: u64,
}

/// A tenant's buckets, as kept in shared data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BucketState {
    /// When the fill levels below were last brought up to date (ns since the epoch).
    pub at_ns: u64,
    /// Millionths of a request in use.
    pub requests_micro: u64,
    /// Millionths of a token in use (may exceed the budget after an excess was charged).
    pub tokens_micro: u64,
}

/// What a client is told about one limit (the `x-ratelimit-*` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitView {
    pub limit: u64,
    pub remaining: u64,
    /// Time until the bucket is full again if nothing else arrives.
    pub reset_ns: u64,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request rate is exhausted.
    Requests,
    /// The token budget is exhausted for now.
    Tokens,
    /// The request alone needs more tokens than the whole budget: it can never pass.
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admit {
        /// The state to store.
        state: BucketState,
        requests: LimitView,
        tokens: LimitView,
    },
    Refuse {
        refusal: Refusal,
        /// Time until the same request could pass, if nothing else arrives.
        retry_after_ns: u64,
        requests: LimitView,
        tokens: LimitView,
    },
}

impl BucketState {
    /// The state at `now_ns`, with what has drained since `at_ns` taken out. A clock that
    /// went backwards (another worker stored a later time) drains nothing.
    pub fn at(self, limits: Limits, now_ns: u64) -> BucketState {
        if now_ns <= self.at_ns {
            return self;
        }
        let elapsed = now_ns - self.at_ns;
        BucketState {
            at_ns: now_ns,
            requests_micro: self
                .requests_micro
                .saturating_sub(drained(elapsed, limits.requests)),
            tokens_micro: self
                .tokens_micro
                .saturating_sub(drained(elapsed, limits.tokens)),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.push(STATE_VERSION);
        for value in [self.at_ns, self.requests_micro, self.tokens_micro] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out
    }

    /// Decodes a stored state; `None` for anything that is not a state of this version.
    pub fn decode(bytes: &[u8]) -> Option<BucketState> {
        if bytes.len() != ENCODED_LEN || bytes.first() != Some(&STATE_VERSION) {
            return None;
        }
        let field = |i: usize| -> Option<u64> {
            let b = bytes.get(1 + 8 * i..9 + 8 * i)?;
            Some(u64::from_le_bytes(b.try_into().ok()?))
        };
        Some(BucketState {
            at_ns: field(0)?,
            requests_micro: field(1)?,
            tokens_micro: field(2)?,
        })
    }
}

/// Decides whether a request costing one request and `tokens` tokens may pass at `now_ns`.
pub fn admit(state: BucketState, limits: Limits, now_ns: u64, tokens: u64) -> Decision {
    let state = state.at(limits, now_ns);
    let refuse = |refusal, retry_after_ns| Decision::Refuse {
        refusal,
        retry_after_ns,
        requests: view(state.requests_micro, limits.requests),
        tokens: view(state.tokens_micro, limits.tokens),
    };

    if tokens > limits.tokens {
        return refuse(Refusal::TooLarge, WINDOW_NS);
    }
    let request_wait = wait_ns(state.requests_micro, limits.requests, 1);
    if request_wait > 0 {
        return refuse(Refusal::Requests, request_wait);
    }
    let token_wait = wait_ns(state.tokens_micro, limits.tokens, tokens);
    if token_wait > 0 {
        return refuse(Refusal::Tokens, token_wait);
    }

    let next = BucketState {
        at_ns: state.at_ns,
        requests_micro: add_units(state.requests_micro, 1),
        tokens_micro: add_units(state.tokens_micro, tokens),
    };
    Decision::Admit {
        state: next,
        requests: view(next.requests_micro, limits.requests),
        tokens: view(next.tokens_micro, limits.tokens),
    }
}

/// Replaces a reservation of `reserved` tokens by the `actual` figure. Returns `None` when
/// nothing needs storing.
pub fn settle(
    state: BucketState,
    limits: Limits,
    now_ns: u64,
    reserved: u64,
    actual: u64,
) -> Option<BucketState> {
    if reserved == actual {
        return None;
    }
    let mut next = state.at(limits, now_ns);
    if actual > reserved {
        let ceiling = to_u64(u128::from(limits.tokens) * MICRO * MAX_DEBT_WINDOWS);
        next.tokens_micro = add_units(next.tokens_micro, actual - reserved).min(ceiling);
    } else {
        let refund = to_u64(u128::from(reserved - actual) * MICRO);
        next.tokens_micro = next.tokens_micro.saturating_sub(refund);
    }
    Some(next)
}

/// Gives back a whole reservation (one request and `tokens` tokens) of a request that was
/// admitted here and then refused elsewhere (the fleet-wide rate-limit service): it never
/// ran, so it uses nothing. Like a refund, never past full.
pub fn release(state: BucketState, limits: Limits, now_ns: u64, tokens: u64) -> BucketState {
    let mut next = state.at(limits, now_ns);
    next.requests_micro = next.requests_micro.saturating_sub(to_u64(MICRO));
    next.tokens_micro = next
        .tokens_micro
        .saturating_sub(to_u64(u128::from(tokens) * MICRO));
    next
}

/// Millionths drained in `elapsed_ns` from a bucket that refills `limit` per window.
fn drained(elapsed_ns: u64, limit: u64) -> u64 {
    to_u64(u128::from(elapsed_ns) * u128::from(limit) * MICRO / u128::from(WINDOW_NS))
}

fn add_units(milli: u64, units: u64) -> u64 {
    milli.saturating_add(to_u64(u128::from(units) * MICRO))
}

fn view(used_micro: u64, limit: u64) -> LimitView {
    let capacity = u128::from(limit) * MICRO;
    let used = u128::from(used_micro);
    LimitView {
        limit,
        remaining: to_u64(capacity.saturating_sub(used) / MICRO),
        reset_ns: time_to_drain(used, limit),
    }
}

/// Time until `cost` more fits under `limit`, if nothing else arrives; zero if it fits now.
/// The caller ensures `cost <= limit`.
fn wait_ns(used_micro: u64, limit: u64, cost: u64) -> u64 {
    let capacity = u128::from(limit) * MICRO;
    let needed = u128::from(used_micro) + u128::from(cost) * MICRO;
    time_to_drain(needed.saturating_sub(capacity), limit)
}

/// Time for `micro` millionths to drain from a bucket refilling `limit` per window,
/// rounded up so that a client that waits this long passes.
fn time_to_drain(micro: u128, limit: u64) -> u64 {
    if micro == 0 || limit == 0 {
        return 0;
    }
    let rate = u128::from(limit) * MICRO;
    to_u64((micro * u128::from(WINDOW_NS)).div_ceil(rate))
}

fn to_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {

    use super::*;

    const S: u64 = 1_000_000_000;
    const L: Limits = Limits {
        requests: 5,
        tokens: 1000,
    };
    const T0: u64 = 1_764_000_000 * S;

    fn admitted(d: Decision) -> (BucketState, LimitView, LimitView) {
        match d {
            Decision::Admit {
                state,
                requests,
                tokens,
            } => (state, requests, tokens),
            other => panic!("expected admit, got {other:?}"),
        }
    }

    fn refused(d: Decision) -> (Refusal, u64) {
        match d {
            Decision::Refuse {
                refusal,
                retry_after_ns,
                ..
            } => (refusal, retry_after_ns),
            other => panic!("expected refuse, got {other:?}"),
        }
    }

    /// Sends requests at `t` until one is refused; returns how many passed.
    fn fill(state: &mut BucketState, t: u64, tokens: u64) -> u64 {
        let mut n = 0;
        while let Decision::Admit { state: s, .. } = admit(*state, L, t, tokens) {
            *state = s;
            n += 1;
        }
        n
    }

    #[test]
    fn exactly_the_limit_passes_at_once() {
        let mut s = BucketState::default();
        assert_eq!(fill(&mut s, T0, 1), 5);
        let (refusal, wait) = refused(admit(s, L, T0, 1));
        assert_eq!(refusal, Refusal::Requests);
        // One request drains every 12 s.
        assert_eq!(wait, 12 * S);
    }

    #[test]
    fn no_double_burst_at_a_minute_boundary() {
        // Spend everything just before a minute ends; a fixed window would allow another
        // full burst a moment later.
        let mut s = BucketState::default();
        let end = T0 - T0 % WINDOW_NS + WINDOW_NS - 1;
        assert_eq!(fill(&mut s, end, 1), 5);
        assert_eq!(fill(&mut s, end + 2, 1), 0);
        // A second later still nothing; 12 s later exactly one.
        assert_eq!(fill(&mut s, end + S, 1), 0);
        assert_eq!(fill(&mut s, end + 12 * S, 1), 1);
    }

    #[test]
    fn retry_after_is_the_real_wait() {
        let mut s = BucketState::default();
        assert_eq!(fill(&mut s, T0, 1), 5);
        let t = T0 + 5 * S;
        let (_, wait) = refused(admit(s, L, t, 1));
        // Refill is rounded down to a millionth of a request: 12 µs at this rate.
        assert!(wait.abs_diff(7 * S) < 20_000, "{wait}");
        assert!(matches!(
            admit(s, L, t + wait - 100_000, 1),
            Decision::Refuse { .. }
        ));
        admitted(admit(s, L, t + wait, 1));
    }

    #[test]
    fn a_client_faster_than_the_limit_gets_exactly_the_limit() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20 {
            let mut s = BucketState::default();
            let minutes = 10;
            let mut t = T0;
            let mut passed = 0u64;
            while t < T0 + minutes * WINDOW_NS {
                t += next() % (2 * S);
                if let Decision::Admit { state, .. } = admit(s, L, t, 0) {
                    s = state;
                    passed += 1;
                }
            }
            // The first burst of 5, then 5 a minute; arrival gaps of up to 2 s lose at most
            // one slot at the end.
            let exact = L.requests * (minutes + 1);
            assert!((exact - 1..=exact).contains(&passed), "{passed} vs {exact}");
        }
    }

    #[test]
    fn token_budget_is_enforced_separately() {
        let (s, req, tok) = admitted(admit(BucketState::default(), L, T0, 600));
        assert_eq!((req.remaining, tok.remaining), (4, 400));
        let (refusal, wait) = refused(admit(s, L, T0, 600));
        assert_eq!(refusal, Refusal::Tokens);
        // 200 tokens must drain at 1000 per minute.
        assert_eq!(wait, 12 * S);
        admitted(admit(s, L, T0, 400));
    }

    #[test]
    fn a_request_larger_than_the_budget_is_too_large() {
        let (refusal, _) = refused(admit(BucketState::default(), L, T0, 1001));
        assert_eq!(refusal, Refusal::TooLarge);
        admitted(admit(BucketState::default(), L, T0, 1000));
    }

    #[test]
    fn settlement_refunds_the_surplus() {
        let (s, _, _) = admitted(admit(BucketState::default(), L, T0, 900));
        let s = settle(s, L, T0, 900, 100).unwrap();
        assert_eq!(s.tokens_micro, 100_000_000);
        admitted(admit(s, L, T0, 900));
    }

    #[test]
    fn settlement_never_refunds_past_full() {
        let (s, _, _) = admitted(admit(BucketState::default(), L, T0, 900));
        // A minute later the reservation has drained on its own.
        let s = settle(s, L, T0 + WINDOW_NS, 900, 0).unwrap();
        assert_eq!(s.tokens_micro, 0);
        let (_, _, tok) = admitted(admit(s, L, T0 + WINDOW_NS, 1000));
        assert_eq!(tok.remaining, 0);
    }

    #[test]
    fn settlement_charges_the_excess_past_the_budget() {
        let (s, _, _) = admitted(admit(BucketState::default(), L, T0, 100));
        let s = settle(s, L, T0, 100, 1500).unwrap();
        assert_eq!(s.tokens_micro, 1_500_000_000);
        let d = admit(s, L, T0 + S, 1);
        let (refusal, wait) = refused(d);
        assert_eq!(refusal, Refusal::Tokens);
        if let Decision::Refuse { tokens, .. } = d {
            assert_eq!(tokens.remaining, 0);
        }
        // The debt of 500 (+1 for this request) drains at 1000 per minute.
        let expected = (501 * WINDOW_NS).div_ceil(1000) - S;
        assert!(wait.abs_diff(expected) < 1_000_000, "{wait} vs {expected}");
        assert_eq!(settle(s, L, T0, 5, 5), None);
    }

    #[test]
    fn a_released_reservation_is_given_back_whole() {
        let (s, _, _) = admitted(admit(BucketState::default(), L, T0, 10));
        let (s, _, _) = admitted(admit(s, L, T0, 600));
        let s = release(s, L, T0, 600);
        assert_eq!((s.requests_micro, s.tokens_micro), (1_000_000, 10_000_000));
        // Never past full: a reservation that has drained on its own gives back nothing more.
        let s = release(s, L, T0 + WINDOW_NS, 10);
        assert_eq!((s.requests_micro, s.tokens_micro), (0, 0));
    }

    #[test]
    fn views_report_remaining_and_reset() {
        let (_, req, tok) = admitted(admit(BucketState::default(), L, T0, 10));
        assert_eq!(
            req,
            LimitView {
                limit: 5,
                remaining: 4,
                reset_ns: 12 * S
            }
        );
        assert_eq!(
            tok,
            LimitView {
                limit: 1000,
                remaining: 990,
                reset_ns: 600_000_000
            }
        );
    }

    #[test]
    fn a_backwards_clock_drains_nothing() {
        let s = BucketState {
            at_ns: T0,
            requests_micro: 5_000_000,
            tokens_micro: 7,
        };
        assert_eq!(s.at(L, T0 - S), s);
        assert_eq!(s.at(L, T0 + 12 * S).requests_micro, 4_000_000);
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let s = BucketState {
            at_ns: 123,
            requests_micro: 1,
            tokens_micro: u64::MAX,
        };
        assert_eq!(BucketState::decode(&s.encode()), Some(s));
        assert_eq!(BucketState::decode(&[]), None);
        assert_eq!(BucketState::decode(&[2; 24]), None);
        let mut wrong_version = s.encode();
        wrong_version[0] = 9;
        assert_eq!(BucketState::decode(&wrong_version), None);
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let s = BucketState {
            at_ns: 0,
            requests_micro: u64::MAX,
            tokens_micro: u64::MAX,
        };
        let big = Limits {
            requests: 1 << 40,
            tokens: 1 << 40,
        };
        let (refusal, wait) = refused(admit(s, big, 1, 1));
        assert_eq!(refusal, Refusal::Requests);
        assert!(wait > 0);
        admitted(admit(BucketState::default(), big, u64::MAX, 1 << 40));
        let s = settle(BucketState::default(), big, u64::MAX, 0, u64::MAX).unwrap();
        assert_eq!(s.tokens_micro, (1u64 << 40) * 1_000_000 * 10);
    }

    #[test]
    fn debt_is_capped_at_ten_windows() {
        let (s, _, _) = admitted(admit(BucketState::default(), L, T0, 10));
        let s = settle(s, L, T0, 10, 1 << 53).unwrap();
        assert_eq!(s.tokens_micro, 10 * 1000 * 1_000_000);
        let (refusal, wait) = refused(admit(s, L, T0, 1));
        assert_eq!(refusal, Refusal::Tokens);
        assert!(wait <= 10 * WINDOW_NS, "{wait}");
    }
}
