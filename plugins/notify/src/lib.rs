//! Notification channels for Switchyard: each is a [`switchyard_core::notification::Channel`]
//! an engine delivers one channel's messages through (`Engine::register_channel`).
//!
//! | channel | what it does with a message |
//! |---|---|
//! | [`SmtpChannel`] | e-mails it (text, and HTML as the alternative) over SMTP with STARTTLS, implicit TLS or none, authenticated when configured; `Message-ID` from the message id |
//! | [`WebhookChannel`] | POSTs it to a named endpoint, signed as the Standard Webhooks specification says (`webhook-id` = the message id, the same on every retry) |
//! | [`SmsGateway`] | POSTs `{ to, from, text, message_id }` to an HTTP SMS gateway, with an `Idempotency-Key` |
//! | [`FileChannel`] | appends it as one JSON line to a file, synced before it counts as sent |
//! | [`LogChannel`] | logs it (`tracing`, at info), for development and demos |
//!
//! A channel answers `Ok` only once the receiving side accepted the message; anything else is
//! an error the engine retries with backoff and, when the retries run out, turns into an
//! incident. No channel logs a secret or a message body.

mod file;
mod http;
mod sms;
mod smtp;
mod webhook;

pub use file::{FileChannel, LogChannel};
pub use sms::SmsGateway;
pub use smtp::{SmtpChannel, SmtpSettings, SmtpTls};
pub use webhook::{sign, WebhookChannel, WebhookEndpoint, WEBHOOK_TYPE};
