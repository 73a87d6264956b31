//! Hardened XML reading: bytes in, a small read-only tree out, or a reason why not.
//!
//! quick-xml tokenises; this module decides what is acceptable and builds the tree that the
//! canonicaliser, the signature check and the assertion rules all read, so that the element
//! whose signature is verified is the very element whose values are used.
//!
//! Refused before anything else: a DOCTYPE or an entity declaration anywhere in the bytes
//! (no DTD, so no entity expansion, no external fetch), then any processing instruction and
//! any entity reference other than the five predefined ones and character references. Input
//! that is not UTF-8, a second root, text outside the root, an unbound prefix or a duplicate
//! attribute is malformed. Size, depth, element and attribute counts are bounded.
//!
//! The tree keeps what exclusive canonicalisation needs: qualified names as written, the
//! namespace declarations of each element, attribute values after XML's normalisation
//! (character references resolved, literal white space in attributes turned into spaces,
//! line ends as `\n`), text split only where a comment or an element interrupts it.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// The namespace bound to the `xml` prefix.
pub const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

/// Bounds for one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub max_elements: usize,
    pub max_attributes: usize,
}

impl Limits {
    /// A SAML response as an IdP posts it: a few KiB in practice.
    pub const RESPONSE: Limits = Limits {
        max_bytes: 256 * 1024,
        max_depth: 32,
        max_elements: 2048,
        max_attributes: 64,
    };
    /// One IdP's metadata, from the plugin configuration.
    pub const METADATA: Limits = Limits {
        max_bytes: 1024 * 1024,
        max_depth: 32,
        max_elements: 8192,
        max_attributes: 64,
    };
}

/// Why a document was refused. Messages never quote the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XmlError {
    TooLarge {
        limit: usize,
    },
    /// A bound other than size (depth, elements, attributes).
    Limit(&'static str),
    /// DOCTYPE, entity, processing instruction.
    Forbidden(&'static str),
    Malformed {
        what: &'static str,
        at: usize,
    },
}

impl std::fmt::Display for XmlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XmlError::TooLarge { limit } => write!(f, "the XML is larger than {limit} bytes"),
            XmlError::Limit(what) => write!(f, "the XML has {what}"),
            XmlError::Forbidden(what) => write!(f, "the XML holds {what}, which is not accepted"),
            XmlError::Malformed { what, at } => {
                write!(f, "the XML is not well-formed ({what}, near byte {at})")
            }
        }
    }
}

pub type NodeId = usize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
    Comment,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The prefix as written, empty for none.
    pub prefix: String,
    pub local: String,
    /// The namespace the element is in, empty for none.
    pub ns: String,
    pub attrs: Vec<Attr>,
    /// Declarations written on this element; prefix empty for the default namespace.
    pub ns_decls: Vec<NsDecl>,
    pub children: Vec<NodeId>,
    pub parent: Option<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub prefix: String,
    pub local: String,
    pub ns: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsDecl {
    pub prefix: String,
    pub uri: String,
}

/// A parsed document: every node in one arena, the root element among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    nodes: Vec<Node>,
    root: NodeId,
}

impl Document {
    pub fn root(&self) -> NodeId {
        self.root
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id)
    }

    pub fn element(&self, id: NodeId) -> Option<&Element> {
        match self.nodes.get(id) {
            Some(Node::Element(e)) => Some(e),
            _ => None,
        }
    }

    /// Every element, in document order.
    pub fn elements(&self) -> impl Iterator<Item = (NodeId, &Element)> {
        self.nodes.iter().enumerate().filter_map(|(id, n)| match n {
            Node::Element(e) => Some((id, e)),
            _ => None,
        })
    }

    /// Whether `id` is the element `{ns}local`.
    pub fn is(&self, id: NodeId, ns: &str, local: &str) -> bool {
        self.element(id)
            .is_some_and(|e| e.ns == ns && e.local == local)
    }

    /// The element children of `id`, in order.
    pub fn child_elements(&self, id: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        let children = self.element(id).map_or(&[][..], |e| e.children.as_slice());
        children
            .iter()
            .copied()
            .filter(|c| matches!(self.nodes.get(*c), Some(Node::Element(_))))
    }

    /// The children of `id` named `{ns}local`.
    pub fn children_named<'a>(
        &'a self,
        id: NodeId,
        ns: &'a str,
        local: &'a str,
    ) -> impl Iterator<Item = NodeId> + 'a {
        self.child_elements(id)
            .filter(move |c| self.is(*c, ns, local))
    }

    /// The first child of `id` named `{ns}local`.
    pub fn child(&self, id: NodeId, ns: &str, local: &str) -> Option<NodeId> {
        self.children_named(id, ns, local).next()
    }

    /// Whether `id` holds text other than XML white space directly (not in a child element).
    pub fn has_loose_text(&self, id: NodeId) -> bool {
        let children = self.element(id).map_or(&[][..], |e| e.children.as_slice());
        children.iter().any(|c| match self.nodes.get(*c) {
            Some(Node::Text(t)) => !is_xml_space(t),
            _ => false,
        })
    }

    /// The text of an element that holds only text (and comments): every text node joined,
    /// so that text interrupted by a comment is read whole. `None` if it has child elements.
    pub fn text(&self, id: NodeId) -> Option<String> {
        let e = self.element(id)?;
        let mut out = String::new();
        for c in &e.children {
            match self.nodes.get(*c) {
                Some(Node::Text(t)) => out.push_str(t),
                Some(Node::Comment) => {}
                _ => return None,
            }
        }
        Some(out)
    }

    /// An attribute in no namespace.
    pub fn attr(&self, id: NodeId, local: &str) -> Option<&str> {
        self.element(id)?
            .attrs
            .iter()
            .find(|a| a.ns.is_empty() && a.local == local)
            .map(|a| a.value.as_str())
    }

    /// The namespace bound to `prefix` (empty: the default namespace) where `id` stands.
    pub fn lookup_ns(&self, id: NodeId, prefix: &str) -> Option<&str> {
        if prefix == "xml" {
            return Some(XML_NS);
        }
        let mut at = Some(id);
        while let Some(e) = at.and_then(|i| self.element(i)) {
            if let Some(d) = e.ns_decls.iter().find(|d| d.prefix == prefix) {
                return Some(d.uri.as_str());
            }
            at = e.parent;
        }
        None
    }

    /// Whether `ancestor` is `id` or one of its ancestors.
    pub fn is_within(&self, id: NodeId, ancestor: NodeId) -> bool {
        let mut at = Some(id);
        while let Some(i) = at {
            if i == ancestor {
                return true;
            }
            at = self.element(i).and_then(|e| e.parent);
        }
        false
    }
}

/// XML white space: space, tab, line feed, carriage return.
pub fn is_xml_space(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// Parses `input` under `limits`.
pub fn parse(input: &[u8], limits: Limits) -> Result<Document, XmlError> {
    if input.len() > limits.max_bytes {
        return Err(XmlError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    // Before anything else: no DTD of any kind, wherever it hides.
    if contains_ignore_case(input, b"<!DOCTYPE") {
        return Err(XmlError::Forbidden("a DOCTYPE"));
    }
    if contains_ignore_case(input, b"<!ENTITY") {
        return Err(XmlError::Forbidden("an entity declaration"));
    }
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let text = std::str::from_utf8(input).map_err(|e| XmlError::Malformed {
        what: "not UTF-8",
        at: e.valid_up_to(),
    })?;
    Builder::new(limits).run(text)
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

struct Builder {
    limits: Limits,
    nodes: Vec<Node>,
    root: Option<NodeId>,
    open: Vec<NodeId>,
    text: String,
    elements: usize,
    seen_event: bool,
}

impl Builder {
    fn new(limits: Limits) -> Self {
        Builder {
            limits,
            nodes: Vec::new(),
            root: None,
            open: Vec::new(),
            text: String::new(),
            elements: 0,
            seen_event: false,
        }
    }

    fn run(mut self, text: &str) -> Result<Document, XmlError> {
        let mut reader = Reader::from_str(text);
        let config = reader.config_mut();
        config.trim_text(false);
        config.expand_empty_elements = false;
        config.check_end_names = true;
        config.check_comments = true;
        config.allow_dangling_amp = false;
        config.allow_unmatched_ends = false;

        loop {
            let at = position(reader.buffer_position());
            let event = reader.read_event().map_err(|_| XmlError::Malformed {
                what: "syntax error",
                at: position(reader.error_position()),
            })?;
            let first = !self.seen_event;
            self.seen_event = true;
            match event {
                Event::Decl(d) => {
                    if !first {
                        return Err(XmlError::Forbidden(
                            "an XML declaration that is not at the start",
                        ));
                    }
                    check_decl(&d, at)?;
                }
                Event::PI(_) => return Err(XmlError::Forbidden("a processing instruction")),
                Event::DocType(_) => return Err(XmlError::Forbidden("a DOCTYPE")),
                Event::Start(e) => self.open_element(&e, at, false)?,
                Event::Empty(e) => self.open_element(&e, at, true)?,
                Event::End(_) => {
                    self.flush_text();
                    if self.open.pop().is_none() {
                        return Err(malformed("an end tag without a start tag", at));
                    }
                }
                Event::Text(t) => {
                    let raw =
                        std::str::from_utf8(t.as_ref()).map_err(|_| malformed("not UTF-8", at))?;
                    self.push_text(raw, at)?;
                }
                Event::CData(c) => {
                    let raw =
                        std::str::from_utf8(c.as_ref()).map_err(|_| malformed("not UTF-8", at))?;
                    if self.open.is_empty() {
                        return Err(malformed("character data outside the root element", at));
                    }
                    self.push_text(raw, at)?;
                }
                Event::GeneralRef(r) => {
                    let name =
                        std::str::from_utf8(r.as_ref()).map_err(|_| malformed("not UTF-8", at))?;
                    let c = resolve_reference(name, at)?;
                    if self.open.is_empty() {
                        return Err(malformed("a reference outside the root element", at));
                    }
                    self.text.push(c);
                }
                Event::Comment(_) => {
                    if let Some(&parent) = self.open.last() {
                        self.flush_text();
                        self.add_child(parent, Node::Comment);
                    }
                }
                Event::Eof => break,
            }
        }
        let end = text.len();
        if !self.open.is_empty() {
            return Err(malformed("an element is not closed", end));
        }
        let root = self.root.ok_or(malformed("no root element", end))?;
        Ok(Document {
            nodes: self.nodes,
            root,
        })
    }

    fn push_text(&mut self, raw: &str, at: usize) -> Result<(), XmlError> {
        if self.open.is_empty() {
            if !is_xml_space(raw) {
                return Err(malformed("text outside the root element", at));
            }
            return Ok(());
        }
        check_chars(raw, at)?;
        push_normalised_line_ends(&mut self.text, raw);
        Ok(())
    }

    fn flush_text(&mut self) {
        if self.text.is_empty() {
            return;
        }
        let text = std::mem::take(&mut self.text);
        if let Some(&parent) = self.open.last() {
            self.add_child(parent, Node::Text(text));
        }
    }

    fn add_child(&mut self, parent: NodeId, node: Node) -> NodeId {
        let id = self.nodes.len();
        self.nodes.push(node);
        if let Some(Node::Element(p)) = self.nodes.get_mut(parent) {
            p.children.push(id);
        }
        id
    }

    fn open_element(&mut self, e: &BytesStart<'_>, at: usize, empty: bool) -> Result<(), XmlError> {
        self.flush_text();
        let parent = self.open.last().copied();
        if parent.is_none() && self.root.is_some() {
            return Err(malformed("a second root element", at));
        }
        if self.open.len() >= self.limits.max_depth {
            return Err(XmlError::Limit("elements nested too deeply"));
        }
        self.elements += 1;
        if self.elements > self.limits.max_elements {
            return Err(XmlError::Limit("too many elements"));
        }

        let name = std::str::from_utf8(e.name().as_ref())
            .map_err(|_| malformed("not UTF-8", at))?
            .to_string();
        let (prefix, local) = split_qname(&name).ok_or(malformed("a bad element name", at))?;
        let (prefix, local) = (prefix.to_string(), local.to_string());

        let mut ns_decls = Vec::new();
        let mut raw_attrs = Vec::new();
        for a in e.attributes() {
            let a = a.map_err(|_| malformed("a bad attribute", at))?;
            if raw_attrs.len() + ns_decls.len() >= self.limits.max_attributes {
                return Err(XmlError::Limit("too many attributes on one element"));
            }
            let key =
                std::str::from_utf8(a.key.as_ref()).map_err(|_| malformed("not UTF-8", at))?;
            let raw = std::str::from_utf8(&a.value).map_err(|_| malformed("not UTF-8", at))?;
            let value = attribute_value(raw, at)?;
            if key == "xmlns" {
                if value == XML_NS || value == XMLNS_NS {
                    return Err(malformed("a reserved namespace as the default", at));
                }
                ns_decls.push(NsDecl {
                    prefix: String::new(),
                    uri: value,
                });
            } else if let Some(p) = key.strip_prefix("xmlns:") {
                check_ns_decl(p, &value, at)?;
                ns_decls.push(NsDecl {
                    prefix: p.to_string(),
                    uri: value,
                });
            } else {
                let (p, l) = split_qname(key).ok_or(malformed("a bad attribute name", at))?;
                raw_attrs.push((p.to_string(), l.to_string(), value));
            }
        }

        let (ns, attrs) = self.resolve_names(parent, &prefix, &ns_decls, raw_attrs, at)?;
        let element = Element {
            prefix,
            local,
            ns,
            attrs,
            ns_decls,
            children: Vec::new(),
            parent,
        };
        let id = match parent {
            Some(p) => self.add_child(p, Node::Element(element)),
            None => {
                self.nodes.push(Node::Element(element));
                let id = self.nodes.len() - 1;
                self.root = Some(id);
                id
            }
        };
        if !empty {
            self.open.push(id);
        }
        Ok(())
    }

    /// The namespace bound to `prefix` for a new element with these declarations under
    /// `parent`.
    fn lookup(&self, parent: Option<NodeId>, own: &[NsDecl], prefix: &str) -> Option<String> {
        if let Some(d) = own.iter().find(|d| d.prefix == prefix) {
            return Some(d.uri.clone());
        }
        let doc_lookup = |id: NodeId| -> Option<String> {
            let mut at = Some(id);
            while let Some(Node::Element(e)) = at.and_then(|i| self.nodes.get(i)) {
                if let Some(d) = e.ns_decls.iter().find(|d| d.prefix == prefix) {
                    return Some(d.uri.clone());
                }
                at = e.parent;
            }
            None
        };
        if prefix == "xml" {
            return Some(XML_NS.to_string());
        }
        parent.and_then(doc_lookup)
    }

    /// Binds a new element and its attributes to their namespaces.
    fn resolve_names(
        &self,
        parent: Option<NodeId>,
        prefix: &str,
        own: &[NsDecl],
        raw_attrs: Vec<(String, String, String)>,
        at: usize,
    ) -> Result<(String, Vec<Attr>), XmlError> {
        let ns = match self.lookup(parent, own, prefix) {
            Some(uri) => uri,
            None if prefix.is_empty() => String::new(),
            None => return Err(malformed("an unbound namespace prefix", at)),
        };
        let mut attrs: Vec<Attr> = Vec::with_capacity(raw_attrs.len());
        for (prefix, local, value) in raw_attrs {
            let ns = if prefix.is_empty() {
                String::new()
            } else {
                self.lookup(parent, own, &prefix)
                    .filter(|u| !u.is_empty())
                    .ok_or(malformed("an unbound namespace prefix", at))?
            };
            if attrs.iter().any(|a| a.ns == ns && a.local == local) {
                return Err(malformed("a duplicate attribute", at));
            }
            attrs.push(Attr {
                prefix,
                local,
                ns,
                value,
            });
        }
        Ok((ns, attrs))
    }
}

fn check_ns_decl(prefix: &str, uri: &str, at: usize) -> Result<(), XmlError> {
    if split_qname(prefix) != Some(("", prefix)) {
        return Err(malformed("a bad namespace prefix", at));
    }
    if uri.is_empty() {
        return Err(malformed("a prefix bound to no namespace", at));
    }
    let reserved = prefix == "xmlns" || (prefix == "xml") != (uri == XML_NS) || uri == XMLNS_NS;
    if reserved {
        return Err(malformed("a reserved namespace prefix or name", at));
    }
    Ok(())
}

fn check_decl(d: &quick_xml::events::BytesDecl<'_>, at: usize) -> Result<(), XmlError> {
    let version = d
        .version()
        .map_err(|_| malformed("a bad XML declaration", at))?;
    if version.as_ref() != b"1.0" {
        return Err(malformed("an XML version other than 1.0", at));
    }
    if let Some(encoding) = d.encoding() {
        let encoding = encoding.map_err(|_| malformed("a bad XML declaration", at))?;
        if !encoding.eq_ignore_ascii_case(b"UTF-8") {
            return Err(malformed("an encoding other than UTF-8", at));
        }
    }
    Ok(())
}

/// `prefix:local` or `local`; `None` for an empty part or a second colon.
fn split_qname(name: &str) -> Option<(&str, &str)> {
    let valid = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
            && s.chars().all(|c| {
                !c.is_whitespace() && !matches!(c, '<' | '>' | '&' | '"' | '\'' | '=' | '/' | ':')
            })
    };
    match name.split_once(':') {
        Some((p, l)) if valid(p) && valid(l) => Some((p, l)),
        None if valid(name) => Some(("", name)),
        _ => None,
    }
}

/// Text with `\r\n` and a lone `\r` read as `\n`, as an XML processor must.
fn push_normalised_line_ends(out: &mut String, raw: &str) {
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' {
            if chars.peek() == Some(&'\n') {
                chars.next();
            }
            out.push('\n');
        } else {
            out.push(c);
        }
    }
}

/// An attribute value after XML's normalisation for attributes of no declared type:
/// references resolved, each literal white-space character (a `\r\n` pair counting as one)
/// read as a space.
fn attribute_value(raw: &str, at: usize) -> Result<String, XmlError> {
    check_chars(raw, at)?;
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find(['&', '<', '\t', '\n', '\r']) {
        out.push_str(rest.get(..i).unwrap_or(""));
        let tail = rest.get(i..).unwrap_or("");
        let c = tail.chars().next().unwrap_or(' ');
        match c {
            '<' => return Err(malformed("'<' in an attribute value", at)),
            '&' => {
                let end = tail
                    .find(';')
                    .ok_or(malformed("an unterminated reference", at))?;
                let name = tail.get(1..end).unwrap_or("");
                out.push(resolve_reference(name, at)?);
                rest = tail.get(end + 1..).unwrap_or("");
            }
            _ => {
                out.push(' ');
                let skip = if tail.starts_with("\r\n") { 2 } else { 1 };
                rest = tail.get(skip..).unwrap_or("");
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A predefined entity or a character reference; anything else is an entity we refuse.
fn resolve_reference(name: &str, at: usize) -> Result<char, XmlError> {
    let c = match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "quot" => '"',
        "apos" => '\'',
        _ => {
            let Some(number) = name.strip_prefix('#') else {
                return Err(XmlError::Forbidden("an entity reference"));
            };
            let code = match number.strip_prefix('x') {
                Some(hex) if !hex.is_empty() && hex.len() <= 6 => u32::from_str_radix(hex, 16),
                None if !number.is_empty() && number.len() <= 7 => number.parse::<u32>(),
                _ => return Err(malformed("a bad character reference", at)),
            }
            .map_err(|_| malformed("a bad character reference", at))?;
            char::from_u32(code)
                .filter(|c| is_xml_char(*c))
                .ok_or(malformed(
                    "a character reference to a character XML forbids",
                    at,
                ))?
        }
    };
    Ok(c)
}

fn check_chars(s: &str, at: usize) -> Result<(), XmlError> {
    if s.chars().all(is_xml_char) {
        Ok(())
    } else {
        Err(malformed("a character XML forbids", at))
    }
}

/// XML 1.0's `Char` production.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
        || c >= '\u{10000}'
}

fn malformed(what: &'static str, at: usize) -> XmlError {
    XmlError::Malformed { what, at }
}

fn position(p: u64) -> usize {
    usize::try_from(p).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {

    use super::*;

    fn parse_ok(s: &str) -> Document {
        parse(s.as_bytes(), Limits::RESPONSE).unwrap()
    }

    fn parse_err(s: &str) -> XmlError {
        parse(s.as_bytes(), Limits::RESPONSE).unwrap_err()
    }

    #[test]
    fn namespaces_are_resolved() {
        let d = parse_ok(r#"<a:r xmlns:a="urn:a" xmlns="urn:d"><c x="1" a:y="2"/></a:r>"#);
        let root = d.root();
        assert!(d.is(root, "urn:a", "r"));
        let c = d.child_elements(root).next().unwrap();
        assert!(d.is(c, "urn:d", "c"));
        let e = d.element(c).unwrap();
        assert_eq!(e.attrs[0].ns, "");
        assert_eq!(e.attrs[1].ns, "urn:a");
        assert_eq!(d.lookup_ns(c, "a"), Some("urn:a"));
        assert_eq!(d.lookup_ns(c, "xml"), Some(XML_NS));
    }

    #[test]
    fn text_interrupted_by_comments_is_read_whole() {
        let d = parse_ok("<r>user@example.com<!---->.evil.test</r>");
        assert_eq!(
            d.text(d.root()).as_deref(),
            Some("user@example.com.evil.test")
        );
        let d = parse_ok("<r>a<b/>c</r>");
        assert_eq!(d.text(d.root()), None);
    }

    #[test]
    fn references_and_line_ends_are_normalised() {
        let d = parse_ok("<r a=\"x&#9;y\tz\r\nw &lt;\">1&amp;2&#x41;\r\n3\r4<![CDATA[<5>]]></r>");
        assert_eq!(d.attr(d.root(), "a"), Some("x\ty z w <"));
        assert_eq!(d.text(d.root()).as_deref(), Some("1&2A\n3\n4<5>"));
    }

    #[test]
    fn dtds_entities_and_instructions_are_refused() {
        for (doc, what) in [
            ("<!DOCTYPE r><r/>", "a DOCTYPE"),
            (
                "<?xml version=\"1.0\"?><!doctype r [<!ENTITY e \"x\">]><r>&e;</r>",
                "a DOCTYPE",
            ),
            ("<r><!-- <!ENTITY e 'x'> --></r>", "an entity declaration"),
            ("<r>&e;</r>", "an entity reference"),
            ("<r a=\"&e;\"/>", "an entity reference"),
            ("<r><?pi x?></r>", "a processing instruction"),
            ("<?pi x?><r/>", "a processing instruction"),
            (
                "<r/><?xml version=\"1.0\"?>",
                "an XML declaration that is not at the start",
            ),
        ] {
            assert_eq!(parse_err(doc), XmlError::Forbidden(what), "{doc}");
        }
    }

    #[test]
    fn malformed_documents_are_refused() {
        for doc in [
            "",
            "<r>",
            "<r></s>",
            "<r/><s/>",
            "x<r/>",
            "<r a='1' a='2'/>",
            "<r xmlns:p='urn:p' xmlns:q='urn:p' p:a='1' q:a='2'/>",
            "<p:r/>",
            "<r p:a='1'/>",
            "<r xmlns:p=''/>",
            "<r>&#0;</r>",
            "<r>\u{1}</r>",
            "<r a='<'/>",
            "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><r/>",
            "<a:b:c/>",
        ] {
            assert!(
                matches!(parse_err(doc), XmlError::Malformed { .. }),
                "{doc:?}: {:?}",
                parse(doc.as_bytes(), Limits::RESPONSE)
            );
        }
        assert!(matches!(
            parse(b"<r>\xff</r>", Limits::RESPONSE),
            Err(XmlError::Malformed { .. })
        ));
    }

    #[test]
    fn limits_hold() {
        let deep = "<a>".repeat(40) + &"</a>".repeat(40);
        assert_eq!(
            parse_err(&deep),
            XmlError::Limit("elements nested too deeply")
        );
        let many = format!("<r>{}</r>", "<a/>".repeat(3000));
        assert_eq!(parse_err(&many), XmlError::Limit("too many elements"));
        let attrs: String = (0..70).map(|i| format!(" a{i}='1'")).collect();
        assert_eq!(
            parse_err(&format!("<r{attrs}/>")),
            XmlError::Limit("too many attributes on one element")
        );
        let big = format!("<r>{}</r>", "x".repeat(300 * 1024));
        assert!(matches!(parse_err(&big), XmlError::TooLarge { .. }));
    }

    #[test]
    fn a_declaration_and_a_bom_are_accepted() {
        let d = parse(
            b"\xEF\xBB\xBF<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<r/>\n<!-- end -->",
            Limits::RESPONSE,
        )
        .unwrap();
        assert!(d.is(d.root(), "", "r"));
    }
}
