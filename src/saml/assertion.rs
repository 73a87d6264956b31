//! The SAML rules for a `Response` posted to our ACS, in the order they are checked:
//!
//! 1. shape (before any cryptography): the root is a `samlp:Response`; IDs are unique in the
//!    document; there is no `EncryptedAssertion`; there is exactly one `Assertion` in the whole
//!    document and it is a direct child of the root; every `Signature` is a direct child of the
//!    root or of that assertion, at most one each;
//! 2. signatures: at least one of the two is signed; each signature present must verify
//!    (`dsig`) against the IdP's pinned keys;
//! 3. the response: `Version` 2.0, `Destination` our ACS URL (required when the response is
//!    signed), `Issuer` (if present) the IdP's entity ID, status `Success`, `InResponseTo`;
//! 4. the assertion: `Version` 2.0, `IssueInstant` not in the future and at most `MAX_AGE_MS`
//!    ago, `Issuer` the IdP's entity ID, a `Subject` with a `NameID`, a bearer
//!    `SubjectConfirmation` whose data names our ACS URL as `Recipient`, is within
//!    `NotBefore`/`NotOnOrAfter`, and has the right `InResponseTo`; `Conditions` within their
//!    time bounds, with only audience, one-time-use and proxy restrictions, every
//!    `AudienceRestriction` naming our SP entity ID; at least one `AuthnStatement`, whose
//!    `SessionNotOnOrAfter` has not passed.
//!
//! Time bounds allow the clock skew both ways: `NotBefore - skew <= now < NotOnOrAfter + skew`,
//! and `now < IssueInstant + MAX_AGE_MS + skew`.
//!
//! The age bound is what keeps the replay store small: the browser posts a response the moment
//! the IdP issues it, so a few minutes is plenty, while `NotOnOrAfter` is whatever the IdP
//! chose (an hour is common on `Conditions`; a malicious or broken IdP may say ten years). An
//! accepted assertion's ID need only be remembered until the earlier of the two ends, and an
//! assertion with several bearer confirmations until the latest of theirs.
//!
//! `InResponseTo`: this version sends no `AuthnRequest`, so every response it accepts is
//! unsolicited, and an unsolicited response must not carry `InResponseTo`. One that does
//! answers a request some other service provider sent, and is refused. A caller that did send
//! a request passes its ID, and then both the response's and the confirmation's
//! `InResponseTo` must equal it.

use super::dsig::{self, DSIG_NS};
use super::metadata::IdpMetadata;
use super::time::parse_ms;
use super::xml::{Document, NodeId, XML_NS};
use super::{Check, Failure};

pub const PROTOCOL_NS: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
pub const ASSERTION_NS: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
const BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";
const SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
const ENTITY_FORMAT: &str = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity";
const EMAIL_FORMAT: &str = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress";
/// Attribute names IdPs use for a user's email address (compared ignoring case).
const EMAIL_ATTRIBUTES: [&str; 6] = [
    "email",
    "mail",
    "emailaddress",
    "user.email",
    "urn:oid:0.9.2342.19200300.100.1.3",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
];
const MAX_SUBJECT_BYTES: usize = 256;
/// How long after its `IssueInstant` (plus the clock skew) an assertion is still accepted,
/// whatever its `NotOnOrAfter` says: five minutes (the Shibboleth SP allows three by default).
pub const MAX_AGE_MS: i64 = 5 * 60 * 1000;

/// What the service provider expects of a response.
#[derive(Debug, Clone, Copy)]
pub struct Expectations<'a> {
    pub idp: &'a IdpMetadata,
    pub sp_entity_id: &'a str,
    pub acs_url: &'a str,
    pub clock_skew_ms: i64,
    /// The ID of the `AuthnRequest` this response answers; `None`: unsolicited only.
    pub in_response_to: Option<&'a str>,
}

/// A verified sign-on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub assertion_id: String,
    /// The `NameID`.
    pub subject: String,
    pub email: Option<String>,
    /// The end of the assertion's validity: the earliest of the conditions' `NotOnOrAfter`,
    /// the `SessionNotOnOrAfter`, and the latest `NotOnOrAfter` of the bearer confirmations
    /// that hold now.
    pub not_on_or_after_ms: i64,
    /// Until when the assertion could still be accepted: the conditions' `NotOnOrAfter` or
    /// the latest of every bearer confirmation's, whichever is earlier, plus the skew; and
    /// never past `IssueInstant + MAX_AGE_MS + skew`. How long its ID must be remembered
    /// against replay.
    pub acceptable_until_ms: i64,
}

/// The response and its one assertion, once their shape is right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub response: NodeId,
    pub assertion: NodeId,
}

/// Step 1: the checks that need no key, so they run before the IdP is chosen.
pub fn shape(doc: &Document) -> Result<Shape, Failure> {
    let response = doc.root();
    if !doc.is(response, PROTOCOL_NS, "Response") {
        return Err(Failure::new(
            Check::NotAResponse,
            "the document is not a SAML 2.0 protocol Response",
        ));
    }

    let mut ids: Vec<&str> = Vec::new();
    for (_, e) in doc.elements() {
        for a in &e.attrs {
            let id_like = (a.ns.is_empty() && matches!(a.local.as_str(), "ID" | "Id" | "id"))
                || (a.ns == XML_NS && a.local == "id");
            if id_like {
                ids.push(a.value.as_str());
            }
        }
    }
    ids.sort_unstable();
    if ids.windows(2).any(|w| w.first() == w.get(1)) {
        return Err(Failure::new(
            Check::DuplicateId,
            "two elements in the response carry the same ID",
        ));
    }

    if doc
        .elements()
        .any(|(_, e)| e.ns == ASSERTION_NS && e.local == "EncryptedAssertion")
    {
        return Err(Failure::new(
            Check::EncryptedAssertion,
            "encrypted assertions are not supported; configure the IdP to sign, not encrypt",
        ));
    }
    let assertions: Vec<NodeId> = doc
        .elements()
        .filter(|(_, e)| e.ns == ASSERTION_NS && e.local == "Assertion")
        .map(|(id, _)| id)
        .collect();
    let [assertion] = assertions.as_slice() else {
        return Err(Failure::new(
            Check::AssertionCount,
            "the response must hold exactly one assertion",
        ));
    };
    let assertion = *assertion;
    if doc.element(assertion).and_then(|e| e.parent) != Some(response) {
        return Err(Failure::new(
            Check::AssertionCount,
            "the assertion must be a direct child of the response",
        ));
    }

    if doc.attr(assertion, "ID").is_none_or(str::is_empty) {
        return Err(Failure::new(
            Check::AssertionCount,
            "the assertion has no ID",
        ));
    }

    let mut on_response = 0;
    let mut on_assertion = 0;
    for (_, e) in doc.elements() {
        if e.ns != DSIG_NS || e.local != "Signature" {
            continue;
        }
        match e.parent {
            Some(p) if p == response => on_response += 1,
            Some(p) if p == assertion => on_assertion += 1,
            _ => {
                return Err(Failure::new(
                    Check::SignaturePlacement,
                    "a signature may only be a direct child of the response or of the assertion",
                ))
            }
        }
    }
    if on_response > 1 || on_assertion > 1 {
        return Err(Failure::new(
            Check::SignaturePlacement,
            "an element carries more than one signature",
        ));
    }
    Ok(Shape {
        response,
        assertion,
    })
}

/// The issuer the assertion claims, before anything is verified: used only to choose which
/// IdP's keys to verify with (and checked again afterwards).
pub fn claimed_issuer(doc: &Document, shape: Shape) -> Option<String> {
    let issuer = doc.child(shape.assertion, ASSERTION_NS, "Issuer")?;
    doc.text(issuer).map(|t| t.trim().to_string())
}

/// Every check, in order; the sign-on, or the first check that failed.
pub fn validate(doc: &Document, expect: &Expectations<'_>, now_ms: i64) -> Result<Login, Failure> {
    let shape = shape(doc)?;
    let Shape {
        response,
        assertion,
    } = shape;

    // 2. Signatures.
    let keys: Vec<_> = expect.idp.keys.iter().map(|k| &k.key).collect();
    let response_sig = doc.child(response, DSIG_NS, "Signature");
    let assertion_sig = doc.child(assertion, DSIG_NS, "Signature");
    if response_sig.is_none() && assertion_sig.is_none() {
        return Err(Failure::new(
            Check::Unsigned,
            "neither the response nor the assertion is signed",
        ));
    }
    if let Some(sig) = response_sig {
        dsig::verify(doc, response, sig, &keys)?;
    }
    if let Some(sig) = assertion_sig {
        dsig::verify(doc, assertion, sig, &keys)?;
    }

    // 3. The response.
    check_version(doc, response)?;
    match doc.attr(response, "Destination") {
        Some(d) if d != expect.acs_url => {
            return Err(Failure::new(
                Check::Destination,
                "the response's Destination is not this service's ACS URL",
            ))
        }
        None if response_sig.is_some() => {
            return Err(Failure::new(
                Check::Destination,
                "a signed response must name this service's ACS URL as its Destination",
            ))
        }
        _ => {}
    }
    if let Some(issuer) = doc.child(response, ASSERTION_NS, "Issuer") {
        check_issuer(doc, issuer, expect)?;
    }
    let success = doc
        .child(response, PROTOCOL_NS, "Status")
        .and_then(|s| doc.child(s, PROTOCOL_NS, "StatusCode"))
        .and_then(|c| doc.attr(c, "Value"))
        == Some(SUCCESS);
    if !success {
        return Err(Failure::new(
            Check::Status,
            "the IdP did not report success for this sign-on",
        ));
    }
    check_in_response_to(doc.attr(response, "InResponseTo"), expect, false)?;

    // 4. The assertion.
    check_version(doc, assertion)?;
    let issued = doc
        .attr(assertion, "IssueInstant")
        .and_then(parse_ms)
        .ok_or(Failure::new(
            Check::NotYetValid,
            "the assertion has no valid IssueInstant",
        ))?;
    if issued > now_ms + expect.clock_skew_ms {
        return Err(Failure::new(
            Check::NotYetValid,
            "the assertion was issued in the future",
        ));
    }
    let fresh_until = issued
        .saturating_add(MAX_AGE_MS)
        .saturating_add(expect.clock_skew_ms);
    if now_ms >= fresh_until {
        return Err(Failure::new(
            Check::Expired,
            format!(
                "the assertion was issued more than {} minutes ago (IssueInstant); sign in again",
                MAX_AGE_MS / 60_000
            ),
        ));
    }
    let issuer = doc
        .child(assertion, ASSERTION_NS, "Issuer")
        .ok_or(Failure::new(Check::Issuer, "the assertion names no Issuer"))?;
    check_issuer(doc, issuer, expect)?;

    let subject_el = only_child(doc, assertion, "Subject").ok_or(Failure::new(
        Check::Subject,
        "the assertion must have one Subject",
    ))?;
    let name_id = only_child(doc, subject_el, "NameID").ok_or(Failure::new(
        Check::Subject,
        "the Subject must hold one NameID (encrypted or other identifiers are not supported)",
    ))?;
    let subject = doc
        .text(name_id)
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty() && t.len() <= MAX_SUBJECT_BYTES)
        .filter(|t| !t.chars().any(char::is_control))
        .ok_or(Failure::new(
            Check::Subject,
            "the NameID must be text of 1 to 256 bytes",
        ))?;

    let confirmed_until = bearer_confirmation(doc, subject_el, expect, now_ms)?;
    let conditions_until = conditions(doc, assertion, expect, now_ms)?;
    let session_until = authn_statements(doc, assertion, now_ms)?;

    let valid_until = conditions_until.map_or(confirmed_until, |c| c.min(confirmed_until));
    let not_on_or_after = session_until.map_or(valid_until, |s| s.min(valid_until));

    // Later, another of its bearer confirmations may hold (one with a later NotOnOrAfter, or
    // a NotBefore still ahead): the ID is remembered until the last of them has expired, and
    // any that cannot hold costs nothing, as the age bound caps it.
    let any_confirmation_until = latest_bearer_end(doc, subject_el).max(confirmed_until);
    let acceptable_until = conditions_until
        .map_or(any_confirmation_until, |c| c.min(any_confirmation_until))
        .saturating_add(expect.clock_skew_ms)
        .min(fresh_until);
    Ok(Login {
        assertion_id: doc.attr(assertion, "ID").unwrap_or_default().to_string(),
        email: email(doc, assertion, name_id, &subject, expect.idp),
        subject,
        not_on_or_after_ms: not_on_or_after,
        acceptable_until_ms: acceptable_until,
    })
}

fn check_version(doc: &Document, id: NodeId) -> Result<(), Failure> {
    if doc.attr(id, "Version") == Some("2.0") {
        Ok(())
    } else {
        Err(Failure::new(
            Check::Version,
            "only SAML version 2.0 is accepted",
        ))
    }
}

fn check_issuer(doc: &Document, issuer: NodeId, expect: &Expectations<'_>) -> Result<(), Failure> {
    let format_ok = doc
        .attr(issuer, "Format")
        .is_none_or(|f| f == ENTITY_FORMAT);
    let text = doc.text(issuer).map(|t| t.trim().to_string());
    if format_ok && text.as_deref() == Some(expect.idp.entity_id.as_str()) {
        Ok(())
    } else {
        Err(Failure::new(
            Check::Issuer,
            "the Issuer is not the entity ID in the IdP metadata",
        ))
    }
}

fn check_in_response_to(
    value: Option<&str>,
    expect: &Expectations<'_>,
    confirmation: bool,
) -> Result<(), Failure> {
    match (value, expect.in_response_to) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(Failure::new(
            Check::InResponseTo,
            "the response answers a sign-on request this service did not send (InResponseTo); start the sign-on from the IdP",
        )),
        (Some(v), Some(sent)) if v == sent => Ok(()),
        // A response to our request may leave the confirmation's InResponseTo out.
        (None, Some(_)) if !confirmation => Err(Failure::new(
            Check::InResponseTo,
            "the response does not answer the sign-on request this service sent",
        )),
        (None, Some(_)) => Ok(()),
        (Some(_), Some(_)) => Err(Failure::new(
            Check::InResponseTo,
            "the response answers another sign-on request (InResponseTo)",
        )),
    }
}

/// The only child `{saml}local` of `id`, if there is exactly one.
fn only_child(doc: &Document, id: NodeId, local: &str) -> Option<NodeId> {
    let mut found = doc.children_named(id, ASSERTION_NS, local);
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

fn time_attr(doc: &Document, id: NodeId, name: &str, check: Check) -> Result<Option<i64>, Failure> {
    match doc.attr(id, name) {
        None => Ok(None),
        Some(v) => parse_ms(v).map(Some).ok_or(Failure::new(
            check,
            "a time is not an xs:dateTime with a time zone",
        )),
    }
}

fn check_window(
    not_before: Option<i64>,
    not_on_or_after: Option<i64>,
    skew: i64,
    now: i64,
    what: &'static str,
) -> Result<(), Failure> {
    if not_before.is_some_and(|nb| now < nb - skew) {
        return Err(Failure::new(
            Check::NotYetValid,
            format!("{what} is not valid yet"),
        ));
    }
    if not_on_or_after.is_some_and(|na| now >= na + skew) {
        return Err(Failure::new(Check::Expired, format!("{what} has expired")));
    }
    Ok(())
}

/// The latest `NotOnOrAfter` of the bearer confirmations that hold now; the first failure if
/// none does.
fn bearer_confirmation(
    doc: &Document,
    subject: NodeId,
    expect: &Expectations<'_>,
    now: i64,
) -> Result<i64, Failure> {
    let mut first_failure = None;
    let mut holds_until: Option<i64> = None;
    for confirmation in bearer_confirmations(doc, subject) {
        match check_confirmation(doc, confirmation, expect, now) {
            Ok(until) => holds_until = holds_until.max(Some(until)),
            Err(f) => {
                first_failure.get_or_insert(f);
            }
        }
    }
    holds_until.ok_or_else(|| {
        first_failure.unwrap_or(Failure::new(
            Check::BearerConfirmation,
            "the Subject has no bearer SubjectConfirmation",
        ))
    })
}

/// The latest `NotOnOrAfter` of any bearer confirmation, whether it holds or not (0: none).
fn latest_bearer_end(doc: &Document, subject: NodeId) -> i64 {
    bearer_confirmations(doc, subject)
        .filter_map(|c| only_child(doc, c, "SubjectConfirmationData"))
        .filter_map(|data| doc.attr(data, "NotOnOrAfter").and_then(parse_ms))
        .max()
        .unwrap_or(0)
}

fn bearer_confirmations(doc: &Document, subject: NodeId) -> impl Iterator<Item = NodeId> + '_ {
    doc.children_named(subject, ASSERTION_NS, "SubjectConfirmation")
        .filter(move |c| doc.attr(*c, "Method") == Some(BEARER))
}

fn check_confirmation(
    doc: &Document,
    confirmation: NodeId,
    expect: &Expectations<'_>,
    now: i64,
) -> Result<i64, Failure> {
    let data = only_child(doc, confirmation, "SubjectConfirmationData").ok_or(Failure::new(
        Check::BearerConfirmation,
        "the bearer confirmation has no SubjectConfirmationData",
    ))?;
    if doc.attr(data, "Recipient") != Some(expect.acs_url) {
        return Err(Failure::new(
            Check::Recipient,
            "the confirmation's Recipient is not this service's ACS URL",
        ));
    }
    let not_before = time_attr(doc, data, "NotBefore", Check::BearerConfirmation)?;
    let not_on_or_after =
        time_attr(doc, data, "NotOnOrAfter", Check::BearerConfirmation)?.ok_or(Failure::new(
            Check::BearerConfirmation,
            "the bearer confirmation has no NotOnOrAfter",
        ))?;
    check_window(
        not_before,
        Some(not_on_or_after),
        expect.clock_skew_ms,
        now,
        "the subject confirmation",
    )?;
    check_in_response_to(doc.attr(data, "InResponseTo"), expect, true)?;
    Ok(not_on_or_after)
}

/// The conditions' `NotOnOrAfter`, once every condition holds.
fn conditions(
    doc: &Document,
    assertion: NodeId,
    expect: &Expectations<'_>,
    now: i64,
) -> Result<Option<i64>, Failure> {
    let conditions = only_child(doc, assertion, "Conditions").ok_or(Failure::new(
        Check::Conditions,
        "the assertion must have one Conditions with an AudienceRestriction",
    ))?;
    let not_before = time_attr(doc, conditions, "NotBefore", Check::Conditions)?;
    let not_on_or_after = time_attr(doc, conditions, "NotOnOrAfter", Check::Conditions)?;
    check_window(
        not_before,
        not_on_or_after,
        expect.clock_skew_ms,
        now,
        "the assertion",
    )?;

    let mut restrictions = 0;
    for condition in doc.child_elements(conditions) {
        let local = doc.element(condition).map_or("", |e| e.local.as_str());
        let known = doc.element(condition).is_some_and(|e| e.ns == ASSERTION_NS)
            && matches!(
                local,
                "AudienceRestriction" | "OneTimeUse" | "ProxyRestriction"
            );
        if !known {
            return Err(Failure::new(
                Check::Conditions,
                "the assertion has a condition this service does not understand",
            ));
        }
        if local == "AudienceRestriction" {
            restrictions += 1;
            let ours = doc
                .children_named(condition, ASSERTION_NS, "Audience")
                .filter_map(|a| doc.text(a))
                .any(|a| a.trim() == expect.sp_entity_id);
            if !ours {
                return Err(Failure::new(
                    Check::Audience,
                    "the assertion is not meant for this service (Audience)",
                ));
            }
        }
    }
    if restrictions == 0 {
        return Err(Failure::new(
            Check::Audience,
            "the assertion has no AudienceRestriction",
        ));
    }
    Ok(not_on_or_after)
}

/// The earliest `SessionNotOnOrAfter`, once there is an authentication statement.
fn authn_statements(doc: &Document, assertion: NodeId, now: i64) -> Result<Option<i64>, Failure> {
    let mut session_end: Option<i64> = None;
    let mut any = false;
    for statement in doc.children_named(assertion, ASSERTION_NS, "AuthnStatement") {
        any = true;
        if let Some(end) = time_attr(doc, statement, "SessionNotOnOrAfter", Check::AuthnStatement)?
        {
            session_end = Some(session_end.map_or(end, |s| s.min(end)));
        }
    }
    if !any {
        return Err(Failure::new(
            Check::AuthnStatement,
            "the assertion has no AuthnStatement",
        ));
    }
    if session_end.is_some_and(|end| now >= end) {
        return Err(Failure::new(
            Check::Expired,
            "the IdP session has ended (SessionNotOnOrAfter)",
        ));
    }
    Ok(session_end)
}

/// The user's email: an email attribute, else an email-format NameID.
fn email(
    doc: &Document,
    assertion: NodeId,
    name_id: NodeId,
    subject: &str,
    idp: &IdpMetadata,
) -> Option<String> {
    let plausible = |s: &str| {
        let s = s.trim();
        (s.len() <= MAX_SUBJECT_BYTES && s.contains('@') && !s.chars().any(char::is_control))
            .then(|| s.to_string())
    };
    let from_attribute = doc
        .children_named(assertion, ASSERTION_NS, "AttributeStatement")
        .flat_map(|s| {
            doc.children_named(s, ASSERTION_NS, "Attribute")
                .collect::<Vec<_>>()
        })
        .filter(|a| {
            doc.attr(*a, "Name")
                .is_some_and(|n| EMAIL_ATTRIBUTES.iter().any(|e| n.eq_ignore_ascii_case(e)))
        })
        .flat_map(|a| {
            doc.children_named(a, ASSERTION_NS, "AttributeValue")
                .collect::<Vec<_>>()
        })
        .filter_map(|v| doc.text(v))
        .find_map(|v| plausible(&v));
    if from_attribute.is_some() {
        return from_attribute;
    }
    let email_format = match doc.attr(name_id, "Format") {
        Some(f) => f == EMAIL_FORMAT,
        None => idp.name_id_formats.iter().any(|f| f == EMAIL_FORMAT),
    };
    if email_format {
        plausible(subject)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::saml::testing::{self, at, ACS, SKEW_MS, SP};

    fn check(name: &str, now: i64) -> Result<Login, Failure> {
        let idp = testing::idp();
        let expect = Expectations {
            idp: &idp,
            sp_entity_id: SP,
            acs_url: ACS,
            clock_skew_ms: SKEW_MS,
            in_response_to: None,
        };
        validate(&testing::vector(name), &expect, now)
    }

    #[test]
    fn an_ordinary_assertion_is_remembered_until_its_end_plus_the_skew() {
        let login = check("signed_assertion", at(0, 1, 0)).unwrap();
        assert_eq!(login.not_on_or_after_ms, at(0, 5, 0));
        assert_eq!(login.acceptable_until_ms, at(0, 6, 0));
    }

    #[test]
    fn an_id_is_remembered_until_the_last_bearer_confirmation_ends() {
        // The first confirmation ends at 00:02, the second (and the conditions) at 00:05.
        let login = check("two_bearer_confirmations", at(0, 1, 0)).unwrap();
        assert_eq!(login.not_on_or_after_ms, at(0, 5, 0));
        assert_eq!(login.acceptable_until_ms, at(0, 6, 0));
        // Past the first's end and its skew, it is still accepted under the second: which is
        // why its ID must still be remembered then.
        let later = check("two_bearer_confirmations", at(0, 4, 0)).unwrap();
        assert_eq!(later.acceptable_until_ms, at(0, 6, 0));
        assert_eq!(
            check("two_bearer_confirmations", at(0, 6, 0)).map_err(|f| f.check),
            Err(Check::Expired)
        );
    }

    #[test]
    fn a_far_future_not_on_or_after_is_honoured_only_for_the_maximum_age() {
        // Valid for ten years, says the IdP; issued at midnight.
        let login = check("far_future_not_on_or_after", at(0, 1, 0)).unwrap();
        assert_eq!(login.acceptable_until_ms, at(0, 6, 0));
        assert!(check("far_future_not_on_or_after", at(0, 5, 59)).is_ok());
        let too_old = check("far_future_not_on_or_after", at(0, 6, 0)).unwrap_err();
        assert_eq!(too_old.check, Check::Expired);
        assert!(too_old.detail.contains("issued more than 5 minutes ago"));
        assert!(too_old.detail.contains("IssueInstant"));

        let old = check("issued_long_ago_far_future", at(0, 1, 0)).unwrap_err();
        assert_eq!(old.check, Check::Expired);
        assert!(old.detail.contains("IssueInstant"), "{old}");
    }

    #[test]
    fn the_remembered_lifetime_is_bounded_whatever_the_assertion_says() {
        // However an assertion accepted now ends, its ID leaves the store within the maximum
        // age plus twice the skew (it may claim to be issued up to the skew ahead).
        for name in [
            "signed_assertion",
            "two_bearer_confirmations",
            "far_future_not_on_or_after",
        ] {
            let now = at(0, 1, 0);
            let login = check(name, now).unwrap();
            assert!(
                login.acceptable_until_ms - now <= MAX_AGE_MS + 2 * SKEW_MS,
                "{name}"
            );
        }
    }
}
