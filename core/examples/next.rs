//! Prints the next fire times of a cron expression.
//!
//! ```text
//! cargo run -q -p tickwheel --example next -- [--tz ZONE] [--from RFC3339] [--count N] 'EXPR'
//! ```
//!
//! Prints `N` (default 5) times strictly after `--from` (default now), one per
//! line, as RFC 3339 UTC with a `Z`. A bad expression, zone or option prints
//! the error to stderr and exits with status 2. Output is streamed, so a huge
//! `--count` piped into `head` stops early and cleanly.

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use tickwheel::Schedule;

const USAGE: &str = "usage: next [--tz ZONE] [--from RFC3339] [--count N] 'EXPR'";

struct Args {
    schedule: Schedule,
    from: DateTime<Utc>,
    count: usize,
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("next: {message}");
            return ExitCode::from(2);
        }
    };
    let mut out = BufWriter::new(io::stdout().lock());
    let written = args
        .schedule
        .upcoming(args.from)
        .take(args.count)
        .try_for_each(|t| writeln!(out, "{}", t.to_rfc3339_opts(SecondsFormat::Secs, true)))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): nothing more to say.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("next: writing output: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut tz = "UTC".to_owned();
    let mut from = Utc::now();
    let mut count = 5usize;
    let mut expr = None;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--tz" => tz = value("--tz")?,
            "--from" => {
                let text = value("--from")?;
                from = DateTime::parse_from_rfc3339(&text)
                    .map_err(|e| format!("--from: {text:?} is not an RFC 3339 time: {e}"))?
                    .with_timezone(&Utc);
            }
            "--count" => {
                let text = value("--count")?;
                count = text
                    .parse()
                    .map_err(|_| format!("--count: {text:?} is not a whole number"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            _ if expr.is_none() => expr = Some(arg),
            _ => return Err(format!("unexpected argument {arg:?}; {USAGE}")),
        }
    }
    let expr = expr.ok_or_else(|| USAGE.to_owned())?;
    let schedule = Schedule::parse(&expr, &tz).map_err(|e| e.to_string())?;
    Ok(Args {
        schedule,
        from,
        count,
    })
}
