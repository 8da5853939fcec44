//! E-mail over SMTP (lettre): a message with its text body, and its HTML body as the
//! alternative when it has one. The `Message-ID` is `<message id@switchyard>`, the same on
//! every retry, so a mail system (or a reader) can drop a repeat. TLS: `starttls` (STARTTLS
//! required), `tls` (implicit TLS, e.g. port 465) or `none` (a local relay only);
//! authentication when a username is given.

use std::time::Duration;

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use switchyard_core::notification::{Channel, Notification, SendError, SendFuture};

/// How the connection to the SMTP server is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS, required (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// None: only for a relay on the same host or network.
    None,
}

/// Where and how to send e-mail.
#[derive(Clone)]
pub struct SmtpSettings {
    /// The server's host name.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// How the connection is secured.
    pub tls: SmtpTls,
    /// A user name and password, when the server wants them.
    pub credentials: Option<(String, String)>,
    /// The sender, e.g. `Switchyard <noreply@example.com>`.
    pub from: String,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .field("from", &self.from)
            .finish()
    }
}

/// Sends messages whose address (`to`) is an e-mail address.
pub struct SmtpChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpChannel {
    /// A channel for `settings`; an error names the setting that is wrong.
    pub fn new(settings: SmtpSettings) -> Result<SmtpChannel, String> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| format!("smtp: from: `{}` is not a mailbox: {e}", settings.from))?;
        let tls = match settings.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls | SmtpTls::Implicit => {
                let parameters = TlsParameters::new(settings.host.clone())
                    .map_err(|e| format!("smtp: host: {e}"))?;
                if settings.tls == SmtpTls::Implicit {
                    Tls::Wrapper(parameters)
                } else {
                    Tls::Required(parameters)
                }
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            .port(settings.port)
            .tls(tls)
            .timeout(Some(Duration::from_secs(30)));
        if let Some((user, password)) = settings.credentials {
            builder = builder.credentials(Credentials::new(user, password));
        }
        Ok(SmtpChannel {
            transport: builder.build(),
            from,
        })
    }
}

impl Channel for SmtpChannel {
    fn send<'a>(&'a self, notification: &'a Notification) -> SendFuture<'a> {
        Box::pin(async move {
            let m = &notification.message;
            // A message that cannot be sent as it is never will be: no retry.
            let to: Mailbox = m.to.parse().map_err(|e| {
                SendError::give_up(format!(
                    "`{}` is not an e-mail address: {e}",
                    switchyard_core::clip(&m.to, 64)
                ))
            })?;
            let builder = Message::builder()
                .from(self.from.clone())
                .to(to)
                .subject(m.subject.clone())
                .message_id(Some(format!("<{}@switchyard>", notification.id)));
            let message = match &m.html {
                Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                    m.text.clone(),
                    html.clone(),
                )),
                None => builder.singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(m.text.clone()),
                ),
            }
            .map_err(|e| SendError::give_up(format!("the e-mail cannot be built: {e}")))?;
            // A permanent refusal (5xx: no such mailbox, refused) is not retried; a transient
            // one (4xx, a lost connection) is.
            self.transport.send(message).await.map(|_| ()).map_err(|e| {
                if e.is_permanent() {
                    SendError::give_up(format!("smtp (permanent): {e}"))
                } else {
                    SendError::from(format!("smtp: {e}"))
                }
            })
        })
    }
}
