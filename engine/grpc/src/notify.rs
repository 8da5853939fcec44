//! The configured notification channels (`[notifications]`), built and registered with the
//! engine: each delivers one channel name's messages through `switchyard_notify`.

use std::collections::BTreeMap;
use std::sync::Arc;

use switchyard_core::notification::Channel;
use switchyard_core::Engine;
use switchyard_notify::{
    FileChannel, LogChannel, SmsGateway, SmtpChannel, SmtpSettings, SmtpTls, WebhookChannel,
    WebhookEndpoint,
};

use crate::config::{ChannelConfig, NotificationsConfig};

/// The channels `config` describes, by name, with their secrets read through `env`. An error
/// names the setting (never a secret's value).
pub fn channels(
    config: &NotificationsConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, Arc<dyn Channel>>, String> {
    let mut built: BTreeMap<String, Arc<dyn Channel>> = BTreeMap::new();
    for (name, channel) in &config.channels {
        let key = format!("notifications.channels.{name}");
        let made: Arc<dyn Channel> = match channel {
            ChannelConfig::Log => Arc::new(LogChannel),
            ChannelConfig::File { path } => Arc::new(FileChannel::new(path)),
            ChannelConfig::Smtp {
                host,
                port,
                tls,
                username,
                password_env,
                from,
            } => {
                let tls = match tls.as_str() {
                    "starttls" => SmtpTls::StartTls,
                    "tls" => SmtpTls::Implicit,
                    "none" => SmtpTls::None,
                    other => {
                        return Err(format!(
                            "`{key}.tls`: `{other}` is not `starttls`, `tls` or `none`"
                        ))
                    }
                };
                let credentials = match (username, password_env) {
                    (Some(user), Some(var)) => Some((
                        user.clone(),
                        env(var).ok_or_else(|| {
                            format!(
                                "`{key}.password_env`: the environment variable {var} is not set"
                            )
                        })?,
                    )),
                    (None, None) => None,
                    _ => {
                        return Err(format!(
                            "`{key}`: give both `username` and `password_env`, or neither"
                        ))
                    }
                };
                Arc::new(
                    SmtpChannel::new(SmtpSettings {
                        host: host.clone(),
                        port: *port,
                        tls,
                        credentials,
                        from: from.clone(),
                    })
                    .map_err(|e| format!("`{key}`: {e}"))?,
                )
            }
            ChannelConfig::SmsGateway {
                url,
                token_env,
                from,
            } => {
                let token = match token_env {
                    Some(var) => Some(env(var).ok_or_else(|| {
                        format!("`{key}.token_env`: the environment variable {var} is not set")
                    })?),
                    None => None,
                };
                Arc::new(SmsGateway::new(url, token, from).map_err(|e| format!("`{key}`: {e}"))?)
            }
            ChannelConfig::Webhook { endpoints } => {
                let mut checked = BTreeMap::new();
                for (endpoint, c) in endpoints {
                    let var = &c.secrets_env;
                    let secrets: Vec<String> = env(var)
                        .ok_or_else(|| {
                            format!("`{key}.endpoints.{endpoint}.secrets_env`: the environment variable {var} is not set")
                        })?
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect();
                    checked.insert(
                        endpoint.clone(),
                        WebhookEndpoint {
                            url: c.url.clone(),
                            secrets,
                        },
                    );
                }
                Arc::new(WebhookChannel::new(checked).map_err(|e| format!("`{key}`: {e}"))?)
            }
        };
        built.insert(name.clone(), made);
    }
    Ok(built)
}

/// Registers every channel with `engine`.
pub fn register(engine: &Engine, channels: BTreeMap<String, Arc<dyn Channel>>) {
    for (name, channel) in channels {
        tracing::info!(channel = %name, "notification channel registered");
        engine.register_channel(&name, channel);
    }
}
