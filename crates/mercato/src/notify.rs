//! Wiring of the notification platform into the application: identity as its directory of
//! users, its event consumer on the bus. The platform itself never reads identity's tables.

use mercato_commerce::identity::{IdentityError, IdentityService};
use mercato_kernel::auth::Role;
use mercato_notify::{Contact, Directory};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Users as the notification platform sees them, through identity's service.
pub struct IdentityDirectory {
    identity: IdentityService,
    admins: Mutex<Option<(Instant, Vec<String>)>>,
}

impl IdentityDirectory {
    pub fn new(identity: IdentityService) -> IdentityDirectory {
        IdentityDirectory {
            identity,
            admins: Mutex::new(None),
        }
    }
}

#[async_trait::async_trait]
impl Directory for IdentityDirectory {
    async fn contact(&self, user_id: &str) -> anyhow::Result<Option<Contact>> {
        let user = match self.identity.user(user_id).await {
            Ok(u) => u,
            Err(IdentityError::NotFound) => return Ok(None),
            Err(e) => return Err(anyhow::anyhow!("looking up {user_id}: {e}")),
        };
        let addresses = self
            .identity
            .addresses(user_id)
            .await
            .map_err(|e| anyhow::anyhow!("addresses of {user_id}: {e}"))?;
        // The default address's phone, else any phone on file.
        let phone = addresses
            .iter()
            .filter(|a| a.phone.is_some())
            .max_by_key(|a| a.is_default)
            .and_then(|a| a.phone.clone());
        Ok(Some(Contact {
            email: Some(user.email),
            phone,
            name: user.name,
            locale: None,
        }))
    }

    async fn admins(&self) -> anyhow::Result<Vec<String>> {
        if let Ok(g) = self.admins.lock()
            && let Some((at, ids)) = g.as_ref()
            && at.elapsed() < Duration::from_secs(60)
        {
            return Ok(ids.clone());
        }
        let mut ids = Vec::new();
        let mut after = None;
        // Identity lists users page by page; admins are few, users may be many (bounded scan).
        for _ in 0..1000 {
            let mut page = self
                .identity
                .list_users(after.clone(), 100)
                .await
                .map_err(|e| anyhow::anyhow!("listing users: {e}"))?;
            // The store answers one row more than asked when another page follows.
            let full = page.len() > 100;
            page.truncate(100);
            let last = page
                .last()
                .map(|u| (u.created_at.as_micros(), u.id.clone()));
            ids.extend(
                page.into_iter()
                    .filter(|u| {
                        u.role == Role::Admin
                            && u.status == mercato_commerce::identity::model::UserStatus::Active
                    })
                    .map(|u| u.id),
            );
            if !full || last.is_none() {
                break;
            }
            after = last;
        }
        ids.sort();
        ids.dedup();
        if let Ok(mut g) = self.admins.lock() {
            *g = Some((Instant::now(), ids.clone()));
        }
        Ok(ids)
    }
}

/// Builds the notification platform on the application's state and subscribes its consumer
/// of commerce events to the bus.
pub fn build(
    state: &mercato_commerce::AppState,
    bus: &std::sync::Arc<mercato_kernel::outbox::EmbeddedBus>,
    shutdown: mercato_kernel::shutdown::Shutdown,
) -> anyhow::Result<mercato_notify::Notifier> {
    use mercato_kernel::outbox::EventBus as _;
    let notifier = mercato_notify::build(
        state.kernel.db.clone(),
        state.kernel.clock.clone(),
        &state.kernel.settings,
        std::sync::Arc::new(IdentityDirectory::new(state.identity.clone())),
        state.kernel.streams.clone(),
        shutdown,
    )?;
    bus.subscribe(mercato_notify::consumer(&notifier));
    Ok(notifier)
}
