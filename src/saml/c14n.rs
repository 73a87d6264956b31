//! Exclusive XML Canonicalization 1.0 without comments
//! (`http://www.w3.org/2001/10/xml-exc-c14n#`), for the one node set XML-DSig needs here:
//! an element's whole subtree, optionally less one element (the enveloped signature).
//!
//! - Elements are written as start and end tags, attributes sorted by namespace URI then
//!   local name (no namespace first), each value in double quotes with `& < " \t \n \r`
//!   escaped; text with `& < > \r` escaped. Comments are left out.
//! - A namespace declaration is written on an element only if the element or one of its
//!   attributes uses its prefix ("visibly utilises" it), or its prefix is in the
//!   `InclusiveNamespaces` `PrefixList` and it is in scope there, and only if the nearest
//!   written ancestor did not already write the same binding. `xmlns=""` is written when an
//!   unprefixed element has no default namespace but an ancestor wrote one. Declarations go
//!   before attributes, sorted by prefix, the default one first.
//! - Nothing outside the apex element is written, but namespaces declared above it are in
//!   scope for it.

use super::xml::{Document, Node, NodeId};

/// Canonical form of the subtree at `apex`, without `exclude` (and its subtree).
/// `inclusive` is the `PrefixList`, `#default` standing for the default namespace.
pub fn canonicalize(
    doc: &Document,
    apex: NodeId,
    exclude: Option<NodeId>,
    inclusive: &[String],
) -> Vec<u8> {
    let inclusive: Vec<&str> = inclusive
        .iter()
        .map(|p| if p == "#default" { "" } else { p.as_str() })
        .collect();
    let mut c = Canonicalizer {
        doc,
        exclude,
        inclusive,
        out: Vec::with_capacity(4096),
    };
    // Nothing written yet: the default namespace counts as written empty.
    let mut rendered: Vec<(String, String)> = vec![(String::new(), String::new())];
    c.element(apex, &mut rendered);
    c.out
}

struct Canonicalizer<'a> {
    doc: &'a Document,
    exclude: Option<NodeId>,
    inclusive: Vec<&'a str>,
    out: Vec<u8>,
}

impl Canonicalizer<'_> {
    /// Writes element `id`. `rendered` holds the bindings written by its written ancestors,
    /// the nearest last; it is restored on return.
    fn element(&mut self, id: NodeId, rendered: &mut Vec<(String, String)>) {
        if Some(id) == self.exclude {
            return;
        }
        let Some(e) = self.doc.element(id) else {
            return;
        };

        // The prefixes this element must consider: the ones it uses, then the inclusive list.
        let mut wanted: Vec<&str> = vec![e.prefix.as_str()];
        wanted.extend(
            e.attrs
                .iter()
                .filter(|a| !a.prefix.is_empty())
                .map(|a| a.prefix.as_str()),
        );
        let mut decls: Vec<(&str, String)> = Vec::new();
        for prefix in wanted.into_iter().chain(self.inclusive.iter().copied()) {
            if prefix == "xml" || decls.iter().any(|(p, _)| *p == prefix) {
                continue;
            }
            let uri = match self.doc.lookup_ns(id, prefix) {
                Some(uri) => uri.to_string(),
                // An unprefixed element with no default namespace in scope.
                None if prefix.is_empty() => String::new(),
                // An inclusive prefix not in scope here.
                None => continue,
            };
            let written = rendered
                .iter()
                .rev()
                .find(|(p, _)| p == prefix)
                .map(|(_, u)| u.as_str());
            let already = match written {
                Some(u) => u == uri,
                None => uri.is_empty(),
            };
            if !already {
                decls.push((prefix, uri));
            }
        }
        decls.sort_by(|a, b| a.0.cmp(b.0));

        let mut attrs: Vec<_> = e.attrs.iter().collect();
        attrs.sort_by(|a, b| (&a.ns, &a.local).cmp(&(&b.ns, &b.local)));

        self.out.push(b'<');
        self.qname(&e.prefix, &e.local);
        for (prefix, uri) in &decls {
            if prefix.is_empty() {
                self.out.extend_from_slice(b" xmlns=\"");
            } else {
                self.out.extend_from_slice(b" xmlns:");
                self.out.extend_from_slice(prefix.as_bytes());
                self.out.extend_from_slice(b"=\"");
            }
            escape_attr(&mut self.out, uri);
            self.out.push(b'"');
        }
        for a in attrs {
            self.out.push(b' ');
            self.qname(&a.prefix, &a.local);
            self.out.extend_from_slice(b"=\"");
            escape_attr(&mut self.out, &a.value);
            self.out.push(b'"');
        }
        self.out.push(b'>');

        let depth = rendered.len();
        rendered.extend(decls.iter().map(|(p, u)| (p.to_string(), u.clone())));
        for child in &e.children {
            match self.doc.node(*child) {
                Some(Node::Element(_)) => self.element(*child, rendered),
                Some(Node::Text(t)) => escape_text(&mut self.out, t),
                Some(Node::Comment) | None => {}
            }
        }
        rendered.truncate(depth);

        self.out.extend_from_slice(b"</");
        self.qname(&e.prefix, &e.local);
        self.out.push(b'>');
    }

    fn qname(&mut self, prefix: &str, local: &str) {
        if !prefix.is_empty() {
            self.out.extend_from_slice(prefix.as_bytes());
            self.out.push(b':');
        }
        self.out.extend_from_slice(local.as_bytes());
    }
}

fn escape_text(out: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'\r' => out.extend_from_slice(b"&#xD;"),
            _ => out.push(b),
        }
    }
}

fn escape_attr(out: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            b'\t' => out.extend_from_slice(b"&#x9;"),
            b'\n' => out.extend_from_slice(b"&#xA;"),
            b'\r' => out.extend_from_slice(b"&#xD;"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {

    use super::super::xml::{parse, Limits};
    use super::*;

    fn c14n(xml: &str, inclusive: &[&str]) -> String {
        let doc = parse(xml.as_bytes(), Limits::RESPONSE).unwrap();
        let inclusive: Vec<String> = inclusive.iter().map(|s| s.to_string()).collect();
        String::from_utf8(canonicalize(&doc, doc.root(), None, &inclusive)).unwrap()
    }

    fn c14n_child(xml: &str, inclusive: &[&str]) -> String {
        let doc = parse(xml.as_bytes(), Limits::RESPONSE).unwrap();
        let child = doc.child_elements(doc.root()).next().unwrap();
        let inclusive: Vec<String> = inclusive.iter().map(|s| s.to_string()).collect();
        String::from_utf8(canonicalize(&doc, child, None, &inclusive)).unwrap()
    }

    #[test]
    fn attributes_sort_and_empty_elements_open() {
        assert_eq!(
            c14n(r#"<r b="2" a='1' xmlns:z="urn:z" z:c="3"><e/></r>"#, &[]),
            r#"<r xmlns:z="urn:z" a="1" b="2" z:c="3"><e></e></r>"#
        );
    }

    #[test]
    fn attributes_sort_by_namespace_uri_not_prefix() {
        assert_eq!(
            c14n(
                r#"<r xmlns:b="urn:a" xmlns:a="urn:b" a:x="1" b:x="2" y="0"/>"#,
                &[]
            ),
            r#"<r xmlns:a="urn:b" xmlns:b="urn:a" y="0" b:x="2" a:x="1"></r>"#
        );
    }

    #[test]
    fn unused_namespaces_are_dropped_and_used_ones_pulled_down() {
        let xml = r#"<p:r xmlns:p="urn:p" xmlns:q="urn:q" xmlns:u="urn:u"><q:c><p:d/></q:c></p:r>"#;
        assert_eq!(
            c14n(xml, &[]),
            r#"<p:r xmlns:p="urn:p"><q:c xmlns:q="urn:q"><p:d></p:d></q:c></p:r>"#
        );
        // A subtree: the in-scope declarations of its ancestors are written where used.
        assert_eq!(
            c14n_child(xml, &[]),
            r#"<q:c xmlns:q="urn:q"><p:d xmlns:p="urn:p"></p:d></q:c>"#
        );
        assert_eq!(
            c14n_child(xml, &["u", "p", "missing"]),
            r#"<q:c xmlns:p="urn:p" xmlns:q="urn:q" xmlns:u="urn:u"><p:d></p:d></q:c>"#
        );
    }

    #[test]
    fn default_namespace_rules() {
        assert_eq!(
            c14n(r#"<r xmlns="urn:d"><c xmlns=""/></r>"#, &[]),
            r#"<r xmlns="urn:d"><c xmlns=""></c></r>"#
        );
        assert_eq!(c14n(r#"<r xmlns=""><c/></r>"#, &[]), "<r><c></c></r>");
        // A prefixed element does not use the default namespace.
        assert_eq!(
            c14n(r#"<p:r xmlns:p="urn:p" xmlns="urn:d"><c/></p:r>"#, &[]),
            r#"<p:r xmlns:p="urn:p"><c xmlns="urn:d"></c></p:r>"#
        );
        assert_eq!(
            c14n(
                r#"<p:r xmlns:p="urn:p" xmlns="urn:d"><c/></p:r>"#,
                &["#default"]
            ),
            r#"<p:r xmlns="urn:d" xmlns:p="urn:p"><c></c></p:r>"#
        );
    }

    #[test]
    fn text_and_attribute_escapes() {
        assert_eq!(
            c14n(
                "<r a=\"&quot;&amp;&lt;&gt;&#9;&#10;&#13;\">&amp;&lt;&gt;&#13;\"'</r>",
                &[]
            ),
            "<r a=\"&quot;&amp;&lt;>&#x9;&#xA;&#xD;\">&amp;&lt;&gt;&#xD;\"'</r>"
        );
    }

    #[test]
    fn comments_are_dropped_and_excluded_subtree_left_out() {
        let doc = parse(b"<r><!-- c -->a<s><t/></s>b</r>", Limits::RESPONSE).unwrap();
        let s = doc.child_elements(doc.root()).next().unwrap();
        let out = canonicalize(&doc, doc.root(), Some(s), &[]);
        assert_eq!(String::from_utf8(out).unwrap(), "<r>ab</r>");
    }

    #[test]
    fn xml_prefix_is_never_declared() {
        assert_eq!(
            c14n(
                r#"<r xml:lang="en"><c xml:space="preserve"/></r>"#,
                &["xml"]
            ),
            r#"<r xml:lang="en"><c xml:space="preserve"></c></r>"#
        );
    }
}
