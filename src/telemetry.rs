//! Structured logs: text for people, JSON for log pipelines.
//!
//! Every reconcile runs in a `reconcile` span carrying `namespace`,
//! `workspace`, `instance` (the backend: an EC2 instance id or a Pod's name)
//! and `phase`, and every sweep in a `sweep` span. In JSON each line is one
//! object whose top level holds the time, level, target, message, the
//! event's own fields and the fields of every span it happened in (an inner
//! span's field wins over an outer one's), so a pipeline can filter on
//! `workspace` or `phase` without unpacking anything.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber; `RUST_LOG` overrides the default level (info).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .try_init(),
    };
}

/// One JSON object per line, span fields flattened into it.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(jiff::Timestamp::now().to_string()),
        );
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("target".into(), Value::String(meta.target().to_string()));
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = None;
            for span in scope.from_root() {
                innermost = Some(span.name());
                let extensions = span.extensions();
                // With JsonFields, a span's recorded fields are a JSON object.
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(fields)) = serde_json::from_str(fields.as_str())
                {
                    line.extend(fields);
                }
            }
            if let Some(name) = innermost {
                line.insert("span".into(), Value::String(name.to_string()));
            }
        }
        event.record(&mut Fields(&mut line));
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Writes an event's fields into the line, as JSON values where they are numbers
/// or booleans.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::Bool(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing::{field, info, info_span};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn span_fields_are_flattened_into_each_json_line() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let outer = info_span!("reconciling object", phase = "Pending");
            let _outer = outer.enter();
            let span = info_span!(
                "reconcile",
                namespace = "team-a",
                workspace = "dev",
                instance = field::Empty,
                phase = field::Empty
            );
            let _in = span.enter();
            span.record("instance", "i-0abc");
            span.record("phase", "Online");
            info!(
                from = "Pending",
                restarts = 2u64,
                healthy = true,
                "phase changed"
            );
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).expect("one JSON object");
        assert_eq!(line["message"], "phase changed");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["span"], "reconcile");
        assert_eq!(line["namespace"], "team-a");
        assert_eq!(line["workspace"], "dev");
        assert_eq!(line["instance"], "i-0abc");
        assert_eq!(line["phase"], "Online", "the inner span's field wins");
        assert_eq!(line["from"], "Pending");
        assert_eq!(line["restarts"], 2);
        assert_eq!(line["healthy"], true);
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
