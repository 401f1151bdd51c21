//! Who a user is, as far as notifications care. The platform never reads another module's
//! tables: the application provides a [`Directory`] (in Mercato, backed by identity's service).

/// How to reach a user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contact {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub name: Option<String>,
    /// Preferred locale, when known.
    pub locale: Option<String>,
}

#[async_trait::async_trait]
pub trait Directory: Send + Sync + 'static {
    /// The user's contact details; `None` when there is no such user.
    async fn contact(&self, user_id: &str) -> anyhow::Result<Option<Contact>>;
    /// Ids of the users who receive operational messages (low stock).
    async fn admins(&self) -> anyhow::Result<Vec<String>>;
}

/// A directory that knows nobody (standalone use with explicit recipients only).
pub struct NoDirectory;

#[async_trait::async_trait]
impl Directory for NoDirectory {
    async fn contact(&self, _user_id: &str) -> anyhow::Result<Option<Contact>> {
        Ok(None)
    }
    async fn admins(&self) -> anyhow::Result<Vec<String>> {
        Ok(Vec::new())
    }
}
