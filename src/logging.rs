//! Log lines go to stderr, and also to `--log-file` when one is given.

use log::LevelFilter;
use simplelog::{format_description, CombinedLogger, ConfigBuilder, SharedLogger, WriteLogger};
use std::io::LineWriter;
use std::path::Path;

/// Sets up logging. A log file that cannot be opened is reported on stderr and otherwise ignored: the
/// plugin must not stop advertising devices because of a logging problem.
///
/// Each line starts with its time in UTC, RFC 3339 with microseconds, always 27 characters
/// (`2026-12-07T15:14:15.491271Z`), so that lines sort as text; then the level in brackets.
pub fn init(level: LevelFilter, file: Option<&Path>) {
    let config = ConfigBuilder::new()
        // simplelog's offset is UTC unless set otherwise: the `Z` is true.
        .set_time_format_custom(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        ))
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .build();
    // simplelog writes a line in several pieces; a LineWriter turns them into one write(2) per line, which
    // matters on the Allocate path (one line per container) and keeps lines whole when several threads log.
    let mut loggers: Vec<Box<dyn SharedLogger>> =
        vec![WriteLogger::new(level, config.clone(), LineWriter::new(std::io::stderr()))];
    let mut file_error = None;
    if let Some(path) = file {
        match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => loggers.push(WriteLogger::new(level, config, LineWriter::new(f))),
            Err(e) => {
                file_error = Some(format!("cannot open log file {}: {e}; logging to stderr only", path.display()))
            }
        }
    }
    // Fails only if a logger is already set (a program embedding us did it): keep theirs.
    let _ = CombinedLogger::init(loggers);
    if let Some(e) = file_error {
        log::warn!("{e}");
    }
}
