//! Identity tokens (`RegistryCredentials.identity_token`, docker's
//! `IdentityToken`): an OAuth2 refresh token, exchanged at the registry's
//! token service for an access token scoped to the repository pulled, as
//! docker does (`POST <realm>` with `grant_type=refresh_token`). A registry
//! without a token service (no `Bearer` challenge) gets the token itself as
//! the bearer token. Access tokens are kept until they expire.

use super::{bearer_param, bearer_realm, client_key, Credentials, Registry, RegistryError, Scrub};
use oci_client::Reference;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Access tokens by (identity token's hash, registry, repository).
#[derive(Default)]
pub(super) struct Exchanged {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

/// Lifetime of an access token whose answer gives none (the token spec's default).
const DEFAULT_EXPIRY: Duration = Duration::from_secs(60);

/// The token service's answer (`token` and `access_token` are the same thing).
#[derive(serde::Deserialize)]
struct Answer {
    access_token: Option<String>,
    token: Option<String>,
    expires_in: Option<u64>,
}

impl Registry {
    /// The bearer token to pull `reference` with: the access token the
    /// identity token `identity` is exchanged for.
    pub(super) async fn access_token(
        &self,
        reference: &Reference,
        identity: &str,
        scrub: &Scrub,
    ) -> Result<String, RegistryError> {
        let registry = reference.resolve_registry().to_owned();
        let key = format!(
            "{}\u{0}{registry}\u{0}{}",
            client_key(Some(&Credentials::Token(identity.to_owned()))),
            reference.repository()
        );
        {
            let mut tokens = self.exchanged.tokens.lock().unwrap_or_else(|p| p.into_inner());
            tokens.retain(|_, (_, until)| *until > Instant::now());
            if let Some((t, _)) = tokens.get(&key) {
                return Ok(t.clone());
            }
        }
        let http = self.http(&registry).await?;
        let url = format!("{}://{registry}/v2/", self.scheme(&registry));
        let res = http.get(&url).send().await.map_err(|e| self.request_error(&registry, &e, scrub))?;
        let challenge = res.headers().get(reqwest::header::WWW_AUTHENTICATE).and_then(|h| h.to_str().ok());
        let (Some(realm), Some(challenge)) = (challenge.and_then(bearer_realm), challenge) else {
            return Ok(identity.to_owned());
        };
        self.safe_realm(&registry, &realm)?;
        let scope = format!("repository:{}:pull", reference.repository());
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", identity)
            .append_pair("service", &bearer_param(challenge, "service").unwrap_or_default())
            .append_pair("scope", &scope)
            .append_pair("client_id", "berth")
            .finish();
        let res = http
            .post(&realm)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| self.request_error(&registry, &e, scrub))?;
        let status = res.status().as_u16();
        let text = res.text().await.map_err(|e| self.request_error(&registry, &e, scrub))?;
        match status {
            200..=299 => {}
            400 | 401 | 403 => {
                return Err(RegistryError::Unauthorized {
                    registry,
                    hint: "; its token service refused the identity token",
                })
            }
            _ => {
                let reason = scrub.clean(text.get(..text.len().min(512)).unwrap_or_default()).trim().to_owned();
                return Err(RegistryError::Server { registry, status, reason });
            }
        }
        let answer: Answer = serde_json::from_str(&text).map_err(|_| RegistryError::Other {
            registry: registry.clone(),
            reason: "the token service's answer to the identity token is not a token".into(),
        })?;
        let Some(access) = answer.access_token.or(answer.token).filter(|t| !t.is_empty()) else {
            return Err(RegistryError::Other {
                registry,
                reason: "the token service answered the identity token without an access token".into(),
            });
        };
        // Kept a little less long than it lives.
        let lifetime =
            answer.expires_in.map_or(DEFAULT_EXPIRY, Duration::from_secs).saturating_sub(Duration::from_secs(5));
        let mut tokens = self.exchanged.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.insert(key, (access.clone(), Instant::now() + lifetime));
        Ok(access)
    }
}
