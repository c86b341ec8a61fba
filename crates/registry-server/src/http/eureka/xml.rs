//! Eureka's XML, read into and written from the JSON shape Eureka's own server uses for the
//! same document (attributes as `@name`, an element's text beside attributes as `$`,
//! repeated elements as a list), so the rest of the adapter knows one shape only.
//!
//! Both directions go through quick-xml's events: text and attributes are escaped by the
//! crate, never by hand. A document type declaration is refused, and so is any entity
//! other than XML's five predefined ones and character references: nothing is expanded
//! that could make a small body large (docs/eureka.md, Bodies).

use quick_xml::Reader;
use quick_xml::Writer;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use serde_json::{Map, Value};

/// Deepest nesting read: Eureka's documents are five levels deep.
const MAX_DEPTH: usize = 32;

/// Why a body is not Eureka XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadXml(pub String);

impl BadXml {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// An element being read: its name, what it holds so far, and its text.
struct Open {
    name: String,
    fields: Map<String, Value>,
    text: String,
    has_children: bool,
}

impl Open {
    fn new(start: &BytesStart<'_>) -> Result<Self, BadXml> {
        let name = String::from_utf8(start.name().as_ref().to_vec())
            .map_err(|_| BadXml::new("an element name is not UTF-8"))?;
        let mut fields = Map::new();
        for attribute in start.attributes() {
            let attribute =
                attribute.map_err(|e| BadXml::new(format!("malformed attribute: {e}")))?;
            let key = String::from_utf8(attribute.key.as_ref().to_vec())
                .map_err(|_| BadXml::new("an attribute name is not UTF-8"))?;
            let value = attribute
                .unescape_value()
                .map_err(|e| BadXml::new(format!("attribute {key}: {e}")))?;
            fields.insert(format!("@{key}"), Value::String(value.into_owned()));
        }
        Ok(Self {
            name,
            fields,
            text: String::new(),
            has_children: false,
        })
    }

    /// The element as a value: its text alone when it has neither attributes nor
    /// children, else an object (with its text as `$` when it has any).
    fn close(self) -> Value {
        if self.fields.is_empty() && !self.has_children {
            return Value::String(self.text.trim().to_owned());
        }
        let mut fields = self.fields;
        let text = self.text.trim();
        if !text.is_empty() {
            fields.insert("$".to_owned(), Value::String(text.to_owned()));
        }
        Value::Object(fields)
    }

    /// Adds a child; a name seen again turns into a list.
    fn add(&mut self, name: String, value: Value) {
        self.has_children = true;
        match self.fields.get_mut(&name) {
            None => {
                self.fields.insert(name, value);
            }
            Some(Value::Array(items)) => items.push(value),
            Some(first) => {
                let first = first.take();
                self.fields.insert(name, Value::Array(vec![first, value]));
            }
        }
    }
}

/// Reads a document into `{"<root>": <value>}`.
pub fn read(bytes: &[u8]) -> Result<Value, BadXml> {
    let text = std::str::from_utf8(bytes).map_err(|_| BadXml::new("the body is not UTF-8"))?;
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<(String, Value)> = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| BadXml::new(format!("malformed XML: {e}")))?;
        match event {
            Event::DocType(_) => {
                return Err(BadXml::new(
                    "document type declarations (DTDs) are not accepted",
                ));
            }
            Event::Start(start) => {
                if root.is_some() {
                    return Err(BadXml::new("content after the root element"));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(BadXml::new("elements nested too deeply"));
                }
                stack.push(Open::new(&start)?);
            }
            Event::Empty(start) => {
                if root.is_some() {
                    return Err(BadXml::new("content after the root element"));
                }
                let open = Open::new(&start)?;
                let name = open.name.clone();
                finish(&mut stack, &mut root, name, open.close());
            }
            Event::End(_) => {
                let Some(open) = stack.pop() else {
                    return Err(BadXml::new("an end tag without its start"));
                };
                let name = open.name.clone();
                finish(&mut stack, &mut root, name, open.close());
            }
            Event::Text(text) => {
                let decoded = text
                    .xml_content()
                    .map_err(|e| BadXml::new(format!("malformed text: {e}")))?;
                push_text(&mut stack, &decoded)?;
            }
            Event::CData(data) => {
                let decoded = data
                    .decode()
                    .map_err(|e| BadXml::new(format!("malformed CDATA: {e}")))?;
                push_text(&mut stack, &decoded)?;
            }
            Event::GeneralRef(reference) => {
                let resolved = if reference.is_char_ref() {
                    reference
                        .resolve_char_ref()
                        .map_err(|e| BadXml::new(format!("bad character reference: {e}")))?
                        .map(String::from)
                } else {
                    let name = reference
                        .decode()
                        .map_err(|e| BadXml::new(format!("bad entity reference: {e}")))?;
                    quick_xml::escape::resolve_predefined_entity(&name).map(str::to_owned)
                };
                let Some(resolved) = resolved else {
                    return Err(BadXml::new(
                        "only XML's predefined entities are accepted (no entity expansion)",
                    ));
                };
                push_text(&mut stack, &resolved)?;
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(BadXml::new("the document ends inside an element"));
    }
    let (name, value) = root.ok_or_else(|| BadXml::new("the body has no root element"))?;
    let mut document = Map::new();
    document.insert(name, value);
    Ok(Value::Object(document))
}

fn push_text(stack: &mut [Open], text: &str) -> Result<(), BadXml> {
    match stack.last_mut() {
        Some(open) => {
            open.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err(BadXml::new("text outside the root element")),
    }
}

fn finish(stack: &mut [Open], root: &mut Option<(String, Value)>, name: String, value: Value) {
    match stack.last_mut() {
        Some(parent) => parent.add(name, value),
        None => *root = Some((name, value)),
    }
}

/// Whether `name` can be an element name as written here (XML's name rule, restricted to
/// the ASCII letters, digits, `_`, `-` and `.` that metadata keys use in practice).
pub fn is_element_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("xml"))
}

/// Writes `{"<root>": <value>}` as a document, the inverse of [`read`]. Keys that cannot
/// be element names (a metadata key with a space) are left out: XML has no way to say
/// them, and Eureka's own server cannot either.
pub fn write(document: &Value) -> Vec<u8> {
    let mut writer = Writer::new(Vec::new());
    let declaration = quick_xml::events::BytesDecl::new("1.0", Some("UTF-8"), Some("yes"));
    // Writing into a Vec cannot fail.
    let _ = writer.write_event(Event::Decl(declaration));
    if let Value::Object(fields) = document {
        for (name, value) in fields {
            element(&mut writer, name, value);
        }
    }
    writer.into_inner()
}

/// The order Eureka's server writes its elements in (JSON objects here have none); other
/// names (metadata keys) follow in the order they come.
const ORDER: [&str; 33] = [
    "versions__delta",
    "apps__hashcode",
    "application",
    "name",
    "instance",
    "instanceId",
    "hostName",
    "app",
    "ipAddr",
    "status",
    "overriddenstatus",
    "port",
    "securePort",
    "countryId",
    "dataCenterInfo",
    "leaseInfo",
    "renewalIntervalInSecs",
    "durationInSecs",
    "registrationTimestamp",
    "lastRenewalTimestamp",
    "evictionTimestamp",
    "serviceUpTimestamp",
    "metadata",
    "homePageUrl",
    "statusPageUrl",
    "healthCheckUrl",
    "secureHealthCheckUrl",
    "vipAddress",
    "secureVipAddress",
    "isCoordinatingDiscoveryServer",
    "lastUpdatedTimestamp",
    "lastDirtyTimestamp",
    "actionType",
];

fn rank(name: &str) -> usize {
    ORDER.iter().position(|n| *n == name).unwrap_or(ORDER.len())
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

fn element(writer: &mut Writer<Vec<u8>>, name: &str, value: &Value) {
    if !is_element_name(name) {
        return;
    }
    match value {
        Value::Array(items) => {
            for item in items {
                element(writer, name, item);
            }
        }
        Value::Object(fields) => {
            let attributes: Vec<(String, String)> = fields
                .iter()
                .filter_map(|(k, v)| {
                    let key = k.strip_prefix('@')?;
                    is_element_name(key).then(|| (key.to_owned(), scalar(v).unwrap_or_default()))
                })
                .collect();
            let start = BytesStart::new(name)
                .with_attributes(attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let _ = writer.write_event(Event::Start(start));
            if let Some(text) = fields.get("$").and_then(scalar) {
                let _ = writer.write_event(Event::Text(BytesText::new(&text)));
            }
            let mut children: Vec<(&String, &Value)> = fields
                .iter()
                .filter(|(key, _)| !key.starts_with('@') && *key != "$")
                .collect();
            children.sort_by_key(|(key, _)| rank(key));
            for (key, child) in children {
                element(writer, key, child);
            }
            let _ = writer.write_event(Event::End(BytesEnd::new(name)));
        }
        other => {
            let text = scalar(other).unwrap_or_default();
            let _ = writer.write_event(Event::Start(BytesStart::new(name)));
            let _ = writer.write_event(Event::Text(BytesText::new(&text)));
            let _ = writer.write_event(Event::End(BytesEnd::new(name)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_attributes_text_and_repeated_elements() {
        let body = br#"<?xml version="1.0"?>
            <instance>
              <app>SUM</app>
              <port enabled="true">8080</port>
              <metadata><a>1 &amp; 2</a><b/></metadata>
              <tag>x</tag><tag>y</tag>
            </instance>"#;
        let value = read(body).expect("reads");
        assert_eq!(
            value,
            json!({"instance": {
                "app": "SUM",
                "port": {"@enabled": "true", "$": "8080"},
                "metadata": {"a": "1 & 2", "b": ""},
                "tag": ["x", "y"],
            }})
        );
    }

    #[test]
    fn refuses_dtds_and_unknown_entities() {
        let billion = br#"<?xml version="1.0"?>
            <!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>
            <instance><app>&lol2;</app></instance>"#;
        assert!(read(billion).expect_err("a DTD").0.contains("DTD"));
        let entity = b"<instance><app>&lol;</app></instance>";
        assert!(read(entity).expect_err("an entity").0.contains("entit"));
        assert!(read(b"<instance><app>x</instance>").is_err());
        assert!(read(b"").is_err());
        assert!(read(b"<a/><b/>").is_err());
    }

    #[test]
    fn writes_what_it_reads() {
        let document = json!({"application": {
            "name": "SUM",
            "instance": [
                {"port": {"$": 8080, "@enabled": "true"}, "status": "UP", "metadata": {"k": "<&>", "bad key": "x"}},
                {"port": {"$": 8081, "@enabled": "false"}, "status": "DOWN", "metadata": {}},
            ],
        }});
        let bytes = write(&document);
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert!(
            text.contains(r#"<port enabled="true">8080</port>"#),
            "{text}"
        );
        assert!(text.contains("&lt;&amp;&gt;"), "{text}");
        assert!(!text.contains("bad key"), "{text}");
        let back = read(&bytes).expect("reads back");
        assert_eq!(back["application"]["instance"][1]["status"], "DOWN");
        assert_eq!(back["application"]["instance"][0]["metadata"]["k"], "<&>");
    }
}
