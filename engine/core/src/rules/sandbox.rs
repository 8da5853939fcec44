//! The sandboxed Rhai engine a rule set evaluates in: no `eval`, no `import`, no clock, file,
//! network or environment access; limits on operations, call depth, expression depth, string,
//! array and map sizes; a wall-clock deadline per evaluation; strict variables; failure on
//! missing map properties. Scripts get exact money helpers and the *engine's* clock.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike as _, NaiveDate, Utc};
use rhai::packages::{
    BasicArrayPackage, BasicMapPackage, BasicMathPackage, CorePackage, LogicPackage,
    MoreStringPackage, Package,
};
use rhai::{Dynamic, Engine, EvalAltResult, ImmutableString, INT};
use rust_decimal::{Decimal, RoundingStrategy};

use crate::decider::{Balances, Counters};
use crate::definition::schema::parse_decimal_text;

/// Limits every evaluation runs under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleLimits {
    /// Most Rhai operations per evaluation (default 1,000,000).
    pub operations: u64,
    /// Deepest function call nesting (default 32).
    pub call_levels: usize,
    /// Deepest expression nesting (default 64; 32 inside functions).
    pub expression_depth: usize,
    /// Longest string in bytes (default 64 KiB).
    pub string_bytes: usize,
    /// Most array items (default 10,000).
    pub array_items: usize,
    /// Most map entries (default 10,000).
    pub map_items: usize,
    /// Wall-clock time per evaluation (default 100 ms).
    pub deadline: Duration,
}

impl Default for RuleLimits {
    fn default() -> Self {
        RuleLimits {
            operations: 1_000_000,
            call_levels: 32,
            expression_depth: 64,
            string_bytes: 64 * 1024,
            array_items: 10_000,
            map_items: 10_000,
            deadline: Duration::from_millis(100),
        }
    }
}

/// What the engine knows about the evaluation running on this thread.
struct Evaluation {
    now: DateTime<Utc>,
    deadline: Instant,
    /// The rule set's reference data (a shared map: cloning it is cheap).
    data: Dynamic,
    /// The counters the decision may read (each read is remembered).
    counters: Counters,
    /// The balances the decision may read (each read is remembered).
    balances: Balances,
}

thread_local! {
    static EVALUATION: RefCell<Option<Evaluation>> = const { RefCell::new(None) };
    /// The last position the locator engine stepped on: (innermost function, line, column).
    static LAST_POSITION: RefCell<Option<(String, usize, usize)>> = const { RefCell::new(None) };
}

/// Takes the position the locator engine last stepped on, with the function it was in (empty
/// when outside any function call the debugger saw).
pub(crate) fn take_last_position() -> Option<(String, usize, usize)> {
    LAST_POSITION.with(|p| p.borrow_mut().take())
}

/// The sandboxed engine plus a debugger that records every position it steps on. Rhai
/// reports limit errors (operations, call depth, size, deadline) at the outermost call, so
/// when one happens the evaluation is repeated on this engine — deterministically: same
/// inputs, same clock — to find where in the script the limit was hit.
pub(crate) fn build_locator(limits: &RuleLimits) -> Engine {
    let mut engine = build_engine(limits);
    #[allow(deprecated)] // "volatile", not deprecated: see its docs
    engine.register_debugger(
        |_, debugger| debugger,
        |context, event, _, _, pos| {
            let stepping = matches!(
                event,
                rhai::debugger::DebuggerEvent::Start | rhai::debugger::DebuggerEvent::Step
            );
            if let (true, Some(line), Some(col)) = (stepping, pos.line(), pos.position()) {
                let function = context
                    .global_runtime_state()
                    .debugger()
                    .call_stack()
                    .last()
                    .map(|frame| frame.fn_name.to_string())
                    .unwrap_or_default();
                LAST_POSITION.with(|p| *p.borrow_mut() = Some((function, line, col)));
            }
            Ok(rhai::debugger::DebuggerCommand::StepInto)
        },
    );
    engine
}

/// The token a deadline abort carries; recognised when formatting errors.
pub(crate) const DEADLINE_TOKEN: &str = "switchyard:deadline";

/// Runs `f` with `now` as the scripts' clock and a deadline `limit` from now.
pub(crate) fn with_evaluation<T>(
    now: DateTime<Utc>,
    limit: Duration,
    data: &Dynamic,
    (counters, balances): (&Counters, &Balances),
    f: impl FnOnce() -> T,
) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            EVALUATION.with(|e| *e.borrow_mut() = None);
        }
    }
    EVALUATION.with(|e| {
        *e.borrow_mut() = Some(Evaluation {
            now,
            deadline: Instant::now() + limit,
            data: data.clone(),
            counters: counters.clone(),
            balances: balances.clone(),
        })
    });
    let _reset = Reset;
    f()
}

/// Runs `f` on the evaluation in progress on this thread; outside one, the helper `name`
/// fails saying so.
fn in_evaluation<T>(
    name: &str,
    f: impl FnOnce(&Evaluation) -> Result<T, Box<EvalAltResult>>,
) -> Result<T, Box<EvalAltResult>> {
    EVALUATION.with(|e| match e.borrow().as_ref() {
        Some(e) => f(e),
        None => Err(format!("{name}() is only available while a rule is evaluated").into()),
    })
}

fn now() -> Result<DateTime<Utc>, Box<EvalAltResult>> {
    EVALUATION
        .with(|e| e.borrow().as_ref().map(|e| e.now))
        .ok_or_else(|| "now() is only available while a rule is evaluated".into())
}

fn date_of(text: &str) -> Result<NaiveDate, Box<EvalAltResult>> {
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc).date_naive())
        .map_err(|_| format!("\"{text}\" is not a date (2026-04-01) or an RFC 3339 time").into())
}

fn zone_of(zone: &str, helper: &str) -> Result<chrono_tz::Tz, Box<EvalAltResult>> {
    zone.parse::<chrono_tz::Tz>().map_err(|_| {
        format!(
            "{helper}(…, \"{}\"): not an IANA time zone such as \"Europe/Berlin\"",
            crate::error::clip(zone, 64)
        )
        .into()
    })
}

/// `time` (RFC 3339) as a wall-clock time in `zone`.
fn local(
    time: &str,
    zone: &str,
    helper: &str,
) -> Result<DateTime<chrono_tz::Tz>, Box<EvalAltResult>> {
    let tz = zone_of(zone, helper)?;
    let t = DateTime::parse_from_rfc3339(time).map_err(|_| {
        format!(
            "{helper}(\"{}\", …): not an RFC 3339 time",
            crate::error::clip(time, 64)
        )
    })?;
    Ok(t.with_timezone(&tz))
}

fn weekday_name(day: chrono::Weekday) -> &'static str {
    match day {
        chrono::Weekday::Mon => "mon",
        chrono::Weekday::Tue => "tue",
        chrono::Weekday::Wed => "wed",
        chrono::Weekday::Thu => "thu",
        chrono::Weekday::Fri => "fri",
        chrono::Weekday::Sat => "sat",
        chrono::Weekday::Sun => "sun",
    }
}

/// The first instant at or after `time` within opening `hours` in `zone`: a map from weekday
/// (`mon` … `sun`) to `"HH:MM-HH:MM"`; a day that is missing, `()` or `"closed"` is closed.
/// `time` itself when open then; on a day whose clocks change, the local times are read as
/// `from_local` reads them. An error names a malformed day, or hours closed all week.
fn next_open(time: &str, zone: &str, hours: &rhai::Map) -> Result<String, Box<EvalAltResult>> {
    let start = local(time, zone, "next_open")?;
    let t = start.with_timezone(&Utc);
    let mut spans = Vec::new();
    for (day, value) in hours {
        if !["mon", "tue", "wed", "thu", "fri", "sat", "sun"].contains(&day.as_str()) {
            return Err(format!(
                "next_open: hours has `{}`, not a weekday (mon … sun)",
                crate::error::clip(day, 32)
            )
            .into());
        }
        if value.is_unit() {
            continue;
        }
        let text = value.clone().into_immutable_string().map_err(|kind| {
            format!("next_open: hours.{day} is {kind}, not \"HH:MM-HH:MM\" or \"closed\"")
        })?;
        if text == "closed" {
            continue;
        }
        let (open, close) = text
            .split_once('-')
            .filter(|(o, c)| {
                [o, c].iter().all(|x| chrono::NaiveTime::parse_from_str(x, "%H:%M").is_ok())
                    && o < c
            })
            .ok_or_else(|| {
                format!(
                    "next_open: hours.{day} is \"{}\", not \"HH:MM-HH:MM\" (opening before closing) or \"closed\"",
                    crate::error::clip(&text, 32)
                )
            })?;
        spans.push((day.to_string(), open.to_string(), close.to_string()));
    }
    let today = start.date_naive();
    for offset in 0..=7 {
        let Some(date) = today.checked_add_signed(chrono::Duration::days(offset)) else {
            break;
        };
        let name = weekday_name(date.weekday());
        for (_, open, close) in spans.iter().filter(|(d, _, _)| d == name) {
            let day = date.to_string();
            let opens = from_local(&day, open, zone)?;
            let closes = from_local(&day, close, zone)?;
            let (opens_at, closes_at) = (
                DateTime::parse_from_rfc3339(&opens).map_err(|e| e.to_string())?,
                DateTime::parse_from_rfc3339(&closes).map_err(|e| e.to_string())?,
            );
            if t < closes_at {
                return Ok(if t >= opens_at {
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                } else {
                    opens
                });
            }
        }
    }
    Err("next_open: the hours are closed on every day".into())
}

/// Most characters a rendered template may have.
const RENDERED_CHARS_MAX: usize = 64 * 1024;

/// `template` with every `{{name}}` replaced by `vars[name]` (text as is, other values as
/// Rhai prints them; with `html`, escaped for HTML). A name `vars` lacks is an error naming
/// it, as is an unclosed `{{`.
fn render(template: &str, vars: &rhai::Map, html: bool) -> Result<String, Box<EvalAltResult>> {
    let helper = if html { "render_html" } else { "render" };
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            format!(
                "{helper}: `{{{{` without `}}}}` at \"{}\"",
                crate::error::clip(&rest[start..], 32)
            )
        })?;
        let name = after[..end].trim();
        let value = vars.get(name).ok_or_else(|| {
            format!(
                "{helper}: the template uses `{}`, which the values do not have",
                crate::error::clip(name, 64)
            )
        })?;
        let text = if value.is_string() {
            value.clone().into_string().unwrap_or_default()
        } else if value.is_unit() {
            String::new()
        } else {
            value.to_string()
        };
        if html {
            for c in text.chars() {
                match c {
                    '&' => out.push_str("&amp;"),
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '"' => out.push_str("&quot;"),
                    '\'' => out.push_str("&#39;"),
                    c => out.push(c),
                }
            }
        } else {
            out.push_str(&text);
        }
        if out.len() > RENDERED_CHARS_MAX * 4 {
            break;
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    if out.chars().count() > RENDERED_CHARS_MAX {
        return Err(
            format!("{helper}: the result is longer than {RENDERED_CHARS_MAX} characters").into(),
        );
    }
    Ok(out)
}

/// The UTC instant (RFC 3339) at which `zone`'s clocks show `clock` ("HH:MM") on `date`.
fn from_local(date: &str, clock: &str, zone: &str) -> Result<String, Box<EvalAltResult>> {
    use chrono::{LocalResult, TimeZone as _};
    let tz = zone_of(zone, "from_local")?;
    let day = date_of(date)?;
    let time = chrono::NaiveTime::parse_from_str(clock, "%H:%M").map_err(|_| {
        format!(
            "from_local(…, \"{}\", …): not a time of day such as \"09:00\"",
            crate::error::clip(clock, 64)
        )
    })?;
    let wall = day.and_time(time);
    let at = match tz.from_local_datetime(&wall) {
        LocalResult::Single(t) => Some(t),
        LocalResult::Ambiguous(earlier, _) => Some(earlier),
        // A gap (clocks jump forward): the first minute after it that exists. Gaps are at
        // most a day long anywhere.
        LocalResult::None => (1..=24 * 60).find_map(|m| {
            let later = wall.checked_add_signed(chrono::Duration::minutes(m))?;
            tz.from_local_datetime(&later).earliest()
        }),
    };
    at.map(|t| {
        t.with_timezone(&Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    })
    .ok_or_else(|| format!("from_local(\"{date}\", \"{clock}\", …): out of range").into())
}

fn decimal_from_str(text: &str) -> Result<Decimal, Box<EvalAltResult>> {
    parse_decimal_text(text).ok_or_else(|| {
        format!("decimal(\"{text}\"): not a decimal; write digits with an optional `-` and `.`")
            .into()
    })
}

fn places(dp: INT) -> Result<u32, Box<EvalAltResult>> {
    u32::try_from(dp)
        .ok()
        .filter(|d| *d <= 28)
        .ok_or_else(|| format!("{dp} decimal places: use 0 to 28").into())
}

/// ISO 4217 minor units for the currencies an ERP commonly bills in.
pub(crate) fn currency_precision(code: &str) -> Option<u32> {
    Some(match code {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        c if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => 2,
        _ => return None,
    })
}

fn rounding(mode: &str) -> Result<RoundingStrategy, Box<EvalAltResult>> {
    match mode {
        "half_up" => Ok(RoundingStrategy::MidpointAwayFromZero),
        "bankers" | "half_even" => Ok(RoundingStrategy::MidpointNearestEven),
        other => Err(format!("rounding mode \"{other}\": use \"half_up\" or \"bankers\"").into()),
    }
}

fn round_currency(d: Decimal, code: &str, mode: &str) -> Result<Decimal, Box<EvalAltResult>> {
    let dp = currency_precision(code)
        .ok_or_else(|| format!("\"{code}\" is not an ISO 4217 currency code"))?;
    Ok(d.round_dp_with_strategy(dp, rounding(mode)?))
}

/// The value at `path` below `value` (map keys as strings, array indexes as integers), or `()`.
fn walk(value: &Dynamic, path: &[Dynamic]) -> Dynamic {
    let Some((step, rest)) = path.split_first() else {
        return value.flatten_clone();
    };
    if let Some(map) = value.read_lock::<rhai::Map>() {
        if let Ok(key) = step.clone().into_immutable_string() {
            if let Some(next) = map.get(key.as_str()) {
                return walk(next, rest);
            }
        }
        return Dynamic::UNIT;
    }
    if let Some(array) = value.read_lock::<rhai::Array>() {
        if let Some(next) = step
            .as_int()
            .ok()
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| array.get(i))
        {
            return walk(next, rest);
        }
    }
    Dynamic::UNIT
}

/// Builds the sandboxed engine.
pub(crate) fn build_engine(limits: &RuleLimits) -> Engine {
    let mut engine = Engine::new_raw();
    // The standard library minus time (scripts use the engine clock), blobs and debugging.
    CorePackage::new().register_into_engine(&mut engine);
    LogicPackage::new().register_into_engine(&mut engine);
    BasicMathPackage::new().register_into_engine(&mut engine);
    BasicArrayPackage::new().register_into_engine(&mut engine);
    BasicMapPackage::new().register_into_engine(&mut engine);
    MoreStringPackage::new().register_into_engine(&mut engine);

    engine.disable_symbol("eval");
    engine.disable_symbol("import");
    engine.set_strict_variables(true);
    engine.set_fail_on_invalid_map_property(true);
    engine.set_max_operations(limits.operations);
    engine.set_max_call_levels(limits.call_levels);
    engine.set_max_expr_depths(limits.expression_depth, limits.expression_depth / 2);
    engine.set_max_string_size(limits.string_bytes);
    engine.set_max_array_size(limits.array_items);
    engine.set_max_map_size(limits.map_items);
    engine.set_max_modules(0);
    engine.on_progress(|ops| {
        if ops % 256 != 0 {
            return None;
        }
        let late = EVALUATION.with(|e| {
            e.borrow()
                .as_ref()
                .is_some_and(|e| Instant::now() > e.deadline)
        });
        late.then(|| Dynamic::from(DEADLINE_TOKEN))
    });
    engine.on_print(|text| tracing::info!(target: "switchyard::rules", "{text}"));
    engine.on_debug(|text, source, pos| {
        tracing::debug!(target: "switchyard::rules", source = source.unwrap_or(""), %pos, "{text}")
    });

    engine.register_fn("decimal", |s: ImmutableString| decimal_from_str(&s));
    engine.register_fn("decimal", |i: INT| Decimal::from(i));
    engine.register_fn("decimal", |d: Decimal| d);
    engine.register_fn("round_half_up", |d: Decimal, dp: INT| {
        Ok::<_, Box<EvalAltResult>>(
            d.round_dp_with_strategy(places(dp)?, RoundingStrategy::MidpointAwayFromZero),
        )
    });
    engine.register_fn("round_bankers", |d: Decimal, dp: INT| {
        Ok::<_, Box<EvalAltResult>>(
            d.round_dp_with_strategy(places(dp)?, RoundingStrategy::MidpointNearestEven),
        )
    });
    engine.register_fn("currency_precision", |code: ImmutableString| {
        currency_precision(&code).map(INT::from).ok_or_else(|| {
            Box::<EvalAltResult>::from(format!("\"{code}\" is not an ISO 4217 currency code"))
        })
    });
    engine.register_fn("round_currency", |d: Decimal, code: ImmutableString| {
        round_currency(d, &code, "half_up")
    });
    engine.register_fn(
        "round_currency",
        |d: Decimal, code: ImmutableString, mode: ImmutableString| round_currency(d, &code, &mode),
    );
    // counter_value("coupon_uses", "VIP20"): how many have been drawn (0 if none), for a
    // counter the command declares. The commit checks the value still holds.
    engine.register_fn(
        "counter_value",
        |counter: ImmutableString, key: ImmutableString| {
            in_evaluation("counter_value", |e| {
                let value = e
                    .counters
                    .read(&counter, &key)
                    .map_err(|m| Box::<EvalAltResult>::from(format!("counter_value: {m}")))?;
                Ok(INT::try_from(value).unwrap_or(INT::MAX))
            })
        },
    );
    // balance_value("uninvoiced", "ACME/EUR"): an exact decimal (0 if never moved), for a
    // balance the command declares. The commit checks the value still holds.
    engine.register_fn(
        "balance_value",
        |balance: ImmutableString, key: ImmutableString| {
            in_evaluation("balance_value", |e| {
                e.balances
                    .read(&balance, &key)
                    .map_err(|m| Box::<EvalAltResult>::from(format!("balance_value: {m}")))
            })
        },
    );
    engine.register_fn("now", || {
        now().map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    });
    engine.register_fn("data", |name: ImmutableString| {
        in_evaluation("data", |e| {
            let map = e
                .data
                .read_lock::<rhai::Map>()
                .ok_or("reference data is not a map")?;
            map.get(name.as_str()).cloned().ok_or_else(|| {
                let known: Vec<String> = map.keys().map(|k| k.to_string()).collect();
                Box::<EvalAltResult>::from(format!(
                    "data(\"{name}\"): no reference data file data/{name}.json; known: {}",
                    known.join(", ")
                ))
            })
        })
    });
    // data_at("prices", ["list_prices", sku, "EUR"]): the value at a path inside a reference
    // data file, or () where the path leads nowhere. Only the leaf is copied, so looking up
    // one price in a large list stays cheap (`data("prices").list_prices` copies the list).
    engine.register_fn("data_at", |name: ImmutableString, path: rhai::Array| {
        in_evaluation("data_at", |e| {
            let map = e
                .data
                .read_lock::<rhai::Map>()
                .ok_or("reference data is not a map")?;
            let Some(root) = map.get(name.as_str()) else {
                return Err(Box::<EvalAltResult>::from(format!(
                    "data_at(\"{name}\", …): no reference data file data/{name}.json"
                )));
            };
            Ok(walk(root, &path))
        })
    });
    engine.register_fn("add_hours", |time: ImmutableString, hours: INT| {
        let t = DateTime::parse_from_rfc3339(&time)
            .map_err(|_| format!("add_hours(\"{time}\", …): not an RFC 3339 time"))?
            .with_timezone(&Utc);
        chrono::Duration::try_hours(hours)
            .and_then(|delta| t.checked_add_signed(delta))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .ok_or_else(|| {
                Box::<EvalAltResult>::from(format!("add_hours(\"{time}\", {hours}): out of range"))
            })
    });
    // add_months("2025-01-31", 1) = "2025-02-28": the month's last day when it is shorter.
    engine.register_fn("add_months", |date: ImmutableString, months: INT| {
        let d = date_of(&date)?;
        let moved = u32::try_from(months.unsigned_abs())
            .ok()
            .map(chrono::Months::new)
            .and_then(|m| {
                if months < 0 {
                    d.checked_sub_months(m)
                } else {
                    d.checked_add_months(m)
                }
            });
        moved.map(|d| d.to_string()).ok_or_else(|| {
            Box::<EvalAltResult>::from(format!("add_months(\"{date}\", {months}): out of range"))
        })
    });
    // from_unix_seconds(1745744400) = "2025-04-27T09:00:00Z": a provider's Unix time (Stripe's
    // `evidence_details.due_by`) as the RFC 3339 text every other time helper takes.
    engine.register_fn("from_unix_seconds", |seconds: INT| {
        DateTime::from_timestamp(seconds, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .ok_or_else(|| {
                Box::<EvalAltResult>::from(format!("from_unix_seconds({seconds}): out of range"))
            })
    });
    // from_minor_units(12000, "EUR") = 120.00: an amount in the currency's minor units (as
    // Stripe and Adyen send them) as an exact decimal, never through a float.
    engine.register_fn("from_minor_units", |value: INT, code: ImmutableString| {
        currency_precision(&code)
            .map(|places| Decimal::new(value, places))
            .ok_or_else(|| {
                Box::<EvalAltResult>::from(format!(
                    "from_minor_units({value}, \"{code}\"): not an ISO 4217 currency code"
                ))
            })
    });
    // Calendar helpers in a named IANA time zone ("Europe/Berlin"), daylight-saving changes
    // included: the local date ("2026-03-29"), the local time ("09:05"), the weekday
    // ("mon" … "sun") of an RFC 3339 time; and from_local(date, "HH:MM", zone), the instant a
    // local wall-clock time happens — in a spring-forward gap the first instant after it, in a
    // fall-back overlap the earlier one.
    engine.register_fn(
        "local_date",
        |time: ImmutableString, zone: ImmutableString| {
            local(&time, &zone, "local_date").map(|t| t.date_naive().to_string())
        },
    );
    engine.register_fn(
        "local_time",
        |time: ImmutableString, zone: ImmutableString| {
            local(&time, &zone, "local_time").map(|t| t.format("%H:%M").to_string())
        },
    );
    engine.register_fn("weekday", |time: ImmutableString, zone: ImmutableString| {
        local(&time, &zone, "weekday").map(|t| weekday_name(t.weekday()).to_string())
    });
    engine.register_fn(
        "from_local",
        |date: ImmutableString, clock: ImmutableString, zone: ImmutableString| {
            from_local(&date, &clock, &zone)
        },
    );
    engine.register_fn(
        "next_open",
        |time: ImmutableString, zone: ImmutableString, hours: rhai::Map| {
            next_open(&time, &zone, &hours)
        },
    );
    engine.register_fn(
        "is_open",
        |time: ImmutableString, zone: ImmutableString, hours: rhai::Map| {
            let next = next_open(&time, &zone, &hours)?;
            let at = |s: &str| DateTime::parse_from_rfc3339(s).map_err(|e| e.to_string());
            Ok::<_, Box<EvalAltResult>>(at(&next)? == at(&time)?)
        },
    );
    engine.register_fn("render", |template: ImmutableString, vars: rhai::Map| {
        render(&template, &vars, false)
    });
    engine.register_fn(
        "render_html",
        |template: ImmutableString, vars: rhai::Map| render(&template, &vars, true),
    );
    engine.register_fn("today", || now().map(|t| t.date_naive().to_string()));
    engine.register_fn("days_between", |a: ImmutableString, b: ImmutableString| {
        Ok::<_, Box<EvalAltResult>>((date_of(&b)? - date_of(&a)?).num_days())
    });
    engine.register_fn("add_days", |date: ImmutableString, days: INT| {
        let d = date_of(&date)?;
        chrono::Duration::try_days(days)
            .and_then(|delta| d.checked_add_signed(delta))
            .map(|d| d.to_string())
            .ok_or_else(|| {
                Box::<EvalAltResult>::from(format!("add_days(\"{date}\", {days}): out of range"))
            })
    });
    engine
}

#[cfg(test)]
mod tests {
    //! Every helper a script can call is total: extreme or malformed arguments are script
    //! errors, never a panic (a panic on a timer's evaluation once stopped every timer).

    use super::*;
    use proptest::prelude::*;

    /// Evaluates `expr` as a script would, with the engine clock at 2026-03-01.
    fn eval(expr: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        let engine = build_engine(&RuleLimits::default());
        let data = Dynamic::from_map(rhai::Map::new()).into_shared();
        let now = DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        with_evaluation(
            now,
            Duration::from_secs(1),
            &data,
            (&Counters::default(), &Balances::default()),
            || engine.eval::<Dynamic>(expr),
        )
    }

    fn int() -> impl Strategy<Value = i64> {
        prop_oneof![
            Just(i64::MIN),
            Just(i64::MAX),
            Just(i64::MIN + 1),
            Just(0),
            Just(-1),
            Just(1),
            Just(106_751_991_167_300),
            Just(-106_751_991_167_300),
            any::<i64>(),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("2026-03-01".to_string()),
            Just("+262142-12-31".to_string()),
            Just("-262143-01-01".to_string()),
            Just("9999-12-31T23:59:59Z".to_string()),
            Just("2026-03-01T12:00:00+14:00".to_string()),
            Just("".to_string()),
            Just("EUR".to_string()),
            Just("XXXX".to_string()),
            Just("half_up".to_string()),
            Just("Europe/Berlin".to_string()),
            Just("America/New_York".to_string()),
            Just("23:59".to_string()),
            Just("79228162514264337593543950335".to_string()),
            Just("-0.0000000000000000000000000001".to_string()),
            "[ -~]{0,40}",
        ]
    }

    fn decimal() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("decimal(\"79228162514264337593543950335\")".to_string()),
            Just("decimal(\"-79228162514264337593543950335\")".to_string()),
            Just("decimal(\"0.0000000000000000000000000001\")".to_string()),
            Just("decimal(0)".to_string()),
            int().prop_map(|i| format!("decimal({i})")),
        ]
    }

    fn quoted(s: &str) -> String {
        format!("{s:?}")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn helpers_are_total(
            n in int(),
            a in text(),
            b in text(),
            d in decimal(),
            e in decimal(),
            which in 0usize..25,
        ) {
            let (a, b) = (quoted(&a), quoted(&b));
            let expr = match which {
                0 => format!("add_days({a}, {n})"),
                1 => format!("add_hours({a}, {n}) + add_months({a}, {n})"),
                2 => format!("days_between({a}, {b})"),
                3 => format!("decimal({a})"),
                4 => format!("decimal({n})"),
                5 => format!("round_half_up({d}, {n})"),
                6 => format!("round_bankers({d}, {n})"),
                7 => format!("currency_precision({a})"),
                8 => format!("round_currency({d}, {a})"),
                9 => format!("round_currency({d}, {a}, {b})"),
                10 => format!("data({a})"),
                11 => format!("data_at({a}, [{b}, {n}])"),
                12 => "now() + today()".to_string(),
                13 => format!("{d} + {e}"),
                14 => format!("{d} * {e}"),
                15 => format!("{d} / {e}"),
                16 => format!("{d} % {e}"),
                17 => format!("{d} - {e}"),
                18 => format!("{n} * {n}"),
                19 => format!("from_unix_seconds({n}) + from_minor_units({n}, {a})"),
                20 => format!("local_date({a}, {b}) + local_time({a}, {b}) + weekday({a}, {b})"),
                21 => format!("from_local({a}, {b}, {a}) + from_local({a}, \"02:30\", \"Europe/Berlin\")"),
                23 => format!("render({a}, #{{ x: {b} }}) + render_html({b}, #{{ y: {n} }})"),
                22 => format!("next_open({a}, {b}, #{{ mon: {a}, sun: {b} }}) + is_open({a}, \"UTC\", #{{ tue: \"08:00-{b}\" }})"),
                _ => format!("{n} / ({n} - {n})"),
            };
            // Ok or a script error; a panic fails the test.
            let _ = eval(&expr);
        }
    }

    #[test]
    fn out_of_range_dates_are_script_errors_with_the_arguments() {
        let e = eval("add_days(\"2026-03-01\", 9223372036854775807)").unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = eval("add_hours(\"2026-03-01T00:00:00Z\", -9223372036854775807)").unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = eval("add_months(\"2026-03-01\", 9223372036854775807)").unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = eval("add_months(\"2026-03-01\", -9223372036854775808)").unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        for (expr, date) in [
            ("add_months(\"2025-04-01\", 12)", "2026-04-01"),
            ("add_months(\"2025-01-31\", 1)", "2025-02-28"),
            ("add_months(\"2024-03-31\", -1)", "2024-02-29"),
        ] {
            assert_eq!(eval(expr).unwrap().into_string().unwrap(), date, "{expr}");
        }
        assert_eq!(
            eval("add_days(\"2026-03-01\", 30)")
                .unwrap()
                .into_string()
                .unwrap(),
            "2026-03-31"
        );
    }

    #[test]
    fn calendar_helpers_follow_the_zone_through_daylight_saving_changes() {
        let text = |expr: &str| eval(expr).unwrap().into_string().unwrap();
        // Berlin springs forward on 2026-03-29 at 02:00 (to 03:00) and falls back on
        // 2026-10-25 at 03:00 (to 02:00).
        for (expr, want) in [
            (
                "local_time(\"2026-03-29T00:59:00Z\", \"Europe/Berlin\")",
                "01:59",
            ),
            (
                "local_time(\"2026-03-29T01:00:00Z\", \"Europe/Berlin\")",
                "03:00",
            ),
            (
                "local_date(\"2026-03-28T23:30:00Z\", \"Europe/Berlin\")",
                "2026-03-29",
            ),
            (
                "local_date(\"2026-03-29T03:30:00Z\", \"America/New_York\")",
                "2026-03-28",
            ),
            (
                "weekday(\"2026-03-29T12:00:00Z\", \"Europe/Berlin\")",
                "sun",
            ),
            (
                "weekday(\"2026-03-30T03:00:00Z\", \"America/Los_Angeles\")",
                "sun",
            ),
            (
                "from_local(\"2026-03-30\", \"09:00\", \"Europe/Berlin\")",
                "2026-03-30T07:00:00Z",
            ),
            (
                "from_local(\"2026-03-27\", \"09:00\", \"Europe/Berlin\")",
                "2026-03-27T08:00:00Z",
            ),
            // 02:30 does not exist that night: the first minute after the gap.
            (
                "from_local(\"2026-03-29\", \"02:30\", \"Europe/Berlin\")",
                "2026-03-29T01:00:00Z",
            ),
            // 02:30 happens twice: the earlier.
            (
                "from_local(\"2026-10-25\", \"02:30\", \"Europe/Berlin\")",
                "2026-10-25T00:30:00Z",
            ),
        ] {
            assert_eq!(text(expr), want, "{expr}");
        }
        let e = eval("local_time(\"2026-03-29T01:00:00Z\", \"Mars/Olympus\")").unwrap_err();
        assert!(e.to_string().contains("not an IANA time zone"), "{e}");
        // The ends of the calendar: an answer or a script error, never a panic.
        for date in ["+262142-12-31", "-262143-01-01", "9999-12-31"] {
            for zone in ["Europe/Berlin", "Pacific/Kiritimati", "America/St_Johns"] {
                let _ = eval(&format!("from_local(\"{date}\", \"23:59\", \"{zone}\")"));
                let _ = eval(&format!("from_local(\"{date}\", \"00:00\", \"{zone}\")"));
            }
        }
        let e = eval("from_local(\"2026-03-29\", \"25:00\", \"UTC\")").unwrap_err();
        assert!(e.to_string().contains("not a time of day"), "{e}");
    }

    #[test]
    fn opening_hours_in_a_time_zone_through_clock_changes() {
        let text = |expr: &str| eval(expr).unwrap().into_string().unwrap();
        let week = "#{ mon: \"08:00-18:00\", tue: \"08:00-18:00\", wed: \"08:00-18:00\", thu: \"08:00-18:00\", fri: \"08:00-17:00\", sat: \"closed\" }";
        for (time, zone, want) in [
            // Friday 10:00 in Berlin (09:00Z): open, so the time itself.
            (
                "2026-03-27T09:00:00Z",
                "Europe/Berlin",
                "2026-03-27T09:00:00Z",
            ),
            // Friday 18:30 in Berlin: closed until Monday 08:00 — after the clocks went
            // forward on Sunday, so 06:00Z, not 07:00Z.
            (
                "2026-03-27T17:30:00Z",
                "Europe/Berlin",
                "2026-03-30T06:00:00Z",
            ),
            // 03:00 on Monday in Berlin (01:00Z): opens at 08:00 local the same day.
            (
                "2026-03-30T01:00:00Z",
                "Europe/Berlin",
                "2026-03-30T06:00:00Z",
            ),
            // The same instant is Sunday evening in New York: Monday 08:00 EDT.
            (
                "2026-03-30T01:00:00Z",
                "America/New_York",
                "2026-03-30T12:00:00Z",
            ),
        ] {
            let expr = format!("next_open(\"{time}\", \"{zone}\", {week})");
            assert_eq!(text(&expr), want, "{expr}");
        }
        let open = |time: &str| {
            eval(&format!("is_open(\"{time}\", \"Europe/Berlin\", {week})"))
                .unwrap()
                .as_bool()
                .unwrap()
        };
        assert!(open("2026-03-27T09:00:00Z"));
        assert!(!open("2026-03-28T09:00:00Z"), "Saturday is closed");
        for (hours, message) in [
            ("#{ mon: \"18:00-08:00\" }", "hours.mon is \"18:00-08:00\""),
            ("#{ funday: \"08:00-09:00\" }", "`funday`, not a weekday"),
            ("#{ mon: 9 }", "hours.mon is"),
            ("#{ sat: \"closed\" }", "closed on every day"),
        ] {
            let e = eval(&format!(
                "next_open(\"2026-03-27T09:00:00Z\", \"UTC\", {hours})"
            ))
            .unwrap_err();
            assert!(e.to_string().contains(message), "{hours}: {e}");
        }
    }

    #[test]
    fn templates_render_values_and_escape_html() {
        let text = |expr: &str| eval(expr).unwrap().into_string().unwrap();
        assert_eq!(
            text("render(\"Quote {{ key }} waits: {{reason}} ({{n}})\", #{ key: \"Q-1\", reason: \"net > 5000\", n: 3 })"),
            "Quote Q-1 waits: net > 5000 (3)"
        );
        assert_eq!(
            text("render_html(\"<b>{{who}}</b>\", #{ who: \"<script>&'\\\"\" })"),
            "<b>&lt;script&gt;&amp;&#39;&quot;</b>"
        );
        let e = eval("render(\"{{missing}}\", #{})").unwrap_err();
        assert!(e.to_string().contains("uses `missing`"), "{e}");
        let e = eval("render(\"a {{open\", #{})").unwrap_err();
        assert!(e.to_string().contains("without"), "{e}");
    }

    #[test]
    fn provider_units_convert_exactly() {
        let t = eval("from_unix_seconds(1745744400)").unwrap();
        assert_eq!(t.into_string().unwrap(), "2025-04-27T09:00:00Z");
        let e = eval("from_unix_seconds(9223372036854775807)").unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        for (expr, amount) in [
            ("from_minor_units(12000, \"EUR\")", "120.00"),
            ("from_minor_units(12000, \"JPY\")", "12000"),
            ("from_minor_units(-5, \"KWD\")", "-0.005"),
            (
                "from_minor_units(9223372036854775807, \"EUR\")",
                "92233720368547758.07",
            ),
        ] {
            let d = eval(expr).unwrap().cast::<Decimal>();
            assert_eq!(d.to_string(), amount, "{expr}");
        }
        let e = eval("from_minor_units(1, \"eur\")").unwrap_err();
        assert!(e.to_string().contains("ISO 4217"), "{e}");
    }
}
