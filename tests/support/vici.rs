//! Parser for `swanctl --raw` output (the textual dump of vici messages), e.g.
//! `list-sa event {net {uniqueid=1 state=ESTABLISHED local-vips=[10.99.0.1] child-sas {..}}}`.

/// A value in a vici message: a string, a list of strings or a nested section.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    List(Vec<String>),
    Section(Section),
}

/// A vici section: ordered key/value entries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Section {
    pub entries: Vec<(String, Value)>,
}

impl Section {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find_map(|(k, v)| match v {
            Value::Str(s) if k == key => Some(s.as_str()),
            _ => None,
        })
    }

    pub fn list(&self, key: &str) -> Vec<String> {
        self.entries
            .iter()
            .find_map(|(k, v)| match v {
                Value::List(l) if k == key => Some(l.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    pub fn section(&self, key: &str) -> Option<&Section> {
        self.entries.iter().find_map(|(k, v)| match v {
            Value::Section(s) if k == key => Some(s),
            _ => None,
        })
    }

    /// Nested sections in order, with their names.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Section)> {
        self.entries.iter().filter_map(|(k, v)| match v {
            Value::Section(s) => Some((k.as_str(), s)),
            _ => None,
        })
    }
}

/// One `swanctl --raw` line: message name (e.g. "list-sa event") and its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub name: String,
    pub body: Section,
}

/// Parses every message in `swanctl --raw` output; lines that are not messages
/// (warnings, log lines) are ignored.
pub fn parse_raw(output: &str) -> Vec<Message> {
    output
        .lines()
        .filter_map(|line| {
            let open = line.find(" {")?;
            let name = line[..open].trim();
            if name.is_empty() || name.contains('[') || name.contains('=') {
                return None;
            }
            let mut p = Parser {
                s: line.as_bytes(),
                i: open + 2,
            };
            let body = p.section()?;
            Some(Message {
                name: name.to_string(),
                body,
            })
        })
        .collect()
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i] == b' ' {
            self.i += 1;
        }
    }

    fn word(&mut self, stops: &[u8]) -> String {
        let start = self.i;
        while self.i < self.s.len() && !stops.contains(&self.s[self.i]) {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    /// One list item: up to a space or the list's `]`, brackets inside it included (a
    /// traffic selector with protocol and port: `10.200.0.0/16[tcp/5201]`).
    fn list_item(&mut self) -> String {
        let start = self.i;
        let mut depth = 0usize;
        while let Some(&c) = self.s.get(self.i) {
            match c {
                b'[' => depth += 1,
                b']' if depth == 0 => break,
                b']' => depth -= 1,
                b' ' if depth == 0 => break,
                _ => {}
            }
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    /// Parses entries up to and including the closing brace.
    fn section(&mut self) -> Option<Section> {
        let mut sec = Section::default();
        loop {
            self.skip_ws();
            match self.s.get(self.i)? {
                b'}' => {
                    self.i += 1;
                    return Some(sec);
                }
                _ => {
                    let key = self.word(b"= {}");
                    self.skip_ws();
                    match self.s.get(self.i)? {
                        b'=' => {
                            self.i += 1;
                            if self.s.get(self.i) == Some(&b'[') {
                                self.i += 1;
                                let mut items = Vec::new();
                                loop {
                                    self.skip_ws();
                                    match self.s.get(self.i)? {
                                        b']' => {
                                            self.i += 1;
                                            break;
                                        }
                                        _ => items.push(self.list_item()),
                                    }
                                }
                                sec.entries.push((key, Value::List(items)));
                            } else {
                                let v = self.word(b" }");
                                sec.entries.push((key, Value::Str(v)));
                            }
                        }
                        b'{' => {
                            self.i += 1;
                            let inner = self.section()?;
                            sec.entries.push((key, Value::Section(inner)));
                        }
                        _ => return None,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_sa_event() {
        let out = "list-sa event {net {uniqueid=1 state=ESTABLISHED local-vips=[10.99.0.1] \
                   child-sas {net-1 {name=net spi-in=4d0cbf7d local-ts=[10.99.0.1/32] \
                   remote-ts=[10.200.0.0/16 10.201.0.0/16]} net-2 {name=icmp \
                   remote-ts=[10.200.0.0/16[icmp] 10.200.0.0/16[tcp/5201]]}}}}\n\
                   list-sas reply {}\n";
        let msgs = parse_raw(out);
        assert_eq!(msgs.len(), 2);
        let sa = msgs[0].body.section("net").expect("net");
        assert_eq!(sa.get("state"), Some("ESTABLISHED"));
        assert_eq!(sa.list("local-vips"), vec!["10.99.0.1"]);
        let child = sa
            .section("child-sas")
            .and_then(|c| c.section("net-1"))
            .expect("child");
        assert_eq!(child.get("spi-in"), Some("4d0cbf7d"));
        assert_eq!(child.list("remote-ts").len(), 2);
        let child = sa
            .section("child-sas")
            .and_then(|c| c.section("net-2"))
            .expect("second child");
        assert_eq!(
            child.list("remote-ts"),
            vec!["10.200.0.0/16[icmp]", "10.200.0.0/16[tcp/5201]"]
        );
        assert_eq!(msgs[1].name, "list-sas reply");
    }
}
