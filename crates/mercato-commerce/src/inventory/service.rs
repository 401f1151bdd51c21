//! Inventory use cases: warehouses, absolute and delta stock changes, reads, and the
//! reservation API checkout and orders use (`*_tx` methods join their transactions).

use super::model::{
    AdjustReason, MAX_ON_HAND, Movement, Reservation, StockLevel, Warehouse, WarehouseId,
    WarehouseStock,
};
use super::store::{InventoryStore, Shortfall, StockAfter, StockRefusal};
use crate::catalog::SkuDirectory;
use crate::seams::StockLevels;
use mercato_kernel::auth::{Principal, Role};
use mercato_kernel::db::{StoreError, Tx};
use mercato_kernel::error::{ApiError, Code, Validator};
use mercato_kernel::gate::StockGate;
use mercato_kernel::jobs::Outcome;
use mercato_kernel::{Kernel, Timestamp};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("not found")]
    NotFound,
    #[error("forbidden")]
    Forbidden(String),
    #[error("below reserved")]
    BelowReserved { on_hand: i64, reserved: i64 },
    #[error("code taken")]
    CodeTaken,
    #[error("{0}")]
    Invalid(ApiError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for InventoryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => InventoryError::NotFound,
            other => InventoryError::Unexpected(other.into()),
        }
    }
}

impl From<InventoryError> for ApiError {
    fn from(e: InventoryError) -> ApiError {
        match e {
            InventoryError::NotFound => ApiError::not_found(),
            InventoryError::Forbidden(d) => ApiError::forbidden().detail(d),
            InventoryError::BelowReserved { on_hand, reserved } => {
                ApiError::new(Code::BelowReserved)
                    .detail(format!("{reserved} units are reserved"))
                    .with("on_hand", on_hand)
                    .with("reserved", reserved)
            }
            InventoryError::CodeTaken => ApiError::new(Code::WarehouseCodeTaken),
            InventoryError::Invalid(e) => e,
            InventoryError::Unexpected(e) => ApiError::from(e),
        }
    }
}

#[derive(Clone)]
pub struct InventoryService {
    inner: Arc<Inner>,
}

struct Inner {
    kernel: Kernel,
    store: InventoryStore,
    catalog: SkuDirectory,
}

impl InventoryService {
    pub fn new(kernel: Kernel, catalog: SkuDirectory) -> InventoryService {
        InventoryService {
            inner: Arc::new(Inner {
                store: InventoryStore::new(kernel.db.clone()),
                kernel,
                catalog,
            }),
        }
    }

    fn now(&self) -> Timestamp {
        self.inner.kernel.clock.now()
    }

    pub async fn create_warehouse(
        &self,
        code: &str,
        name: &str,
        country: &str,
        region: Option<&str>,
    ) -> Result<Warehouse, InventoryError> {
        let mut v = Validator::new();
        let code = code.trim();
        let country = country.trim().to_ascii_uppercase();
        v.check(
            !code.is_empty()
                && code.len() <= 32
                && code
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)),
            "code",
            "code must be 1-32 of A-Z 0-9 - _",
        );
        v.check(
            !name.trim().is_empty() && name.chars().count() <= 100,
            "name",
            "name is required (≤ 100 chars)",
        );
        v.check(
            country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase()),
            "country",
            "country must be an ISO 3166-1 alpha-2 code",
        );
        if let Some(r) = region {
            v.check(r.chars().count() <= 100, "region", "region is too long");
        }
        v.finish().map_err(InventoryError::Invalid)?;
        let w = Warehouse {
            id: WarehouseId::new().into_string(),
            code: code.to_owned(),
            name: name.trim().to_owned(),
            country,
            region: region
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty()),
            created_at: self.now(),
        };
        match self.inner.store.insert_warehouse(&w).await {
            Ok(()) => Ok(w),
            Err(e) if e.is_unique_violation() => Err(InventoryError::CodeTaken),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn warehouses(&self) -> Result<Vec<Warehouse>, InventoryError> {
        Ok(self.inner.store.warehouses().await?)
    }

    /// The canonical SKU, after checking it exists and that `actor` may manage its stock
    /// (admins any; sellers their own products' SKUs).
    async fn managed_sku(&self, actor: &Principal, raw: &str) -> Result<String, InventoryError> {
        let sku = crate::catalog::model::Sku::parse(raw)
            .ok_or(InventoryError::NotFound)?
            .as_str()
            .to_owned();
        let infos = self
            .inner
            .catalog
            .skus(std::slice::from_ref(&sku))
            .await
            .map_err(|e| InventoryError::Unexpected(anyhow::anyhow!("{e}")))?;
        let info = infos.get(&sku).ok_or(InventoryError::NotFound)?;
        match actor.role {
            Role::Admin => Ok(sku),
            Role::Seller if info.seller_id == actor.subject => Ok(sku),
            Role::Seller => Err(InventoryError::Forbidden(
                "sellers manage only their own stock".into(),
            )),
            _ => Err(InventoryError::Forbidden(
                "only sellers and admins manage stock".into(),
            )),
        }
    }

    fn refusal(r: StockRefusal) -> InventoryError {
        match r {
            StockRefusal::BelowReserved { on_hand, reserved } => {
                InventoryError::BelowReserved { on_hand, reserved }
            }
            StockRefusal::UnknownWarehouse => {
                InventoryError::Invalid(ApiError::invalid("warehouse_id", "no such warehouse"))
            }
            StockRefusal::AboveCap { on_hand } => InventoryError::Invalid(ApiError::invalid(
                "delta",
                format!("on_hand ({on_hand}) plus delta would exceed the cap of {MAX_ON_HAND}"),
            )),
        }
    }

    /// Sets the absolute on-hand count of (SKU, warehouse); idempotent.
    pub async fn set_on_hand(
        &self,
        actor: &Principal,
        sku: &str,
        warehouse_id: &str,
        on_hand: i64,
    ) -> Result<StockLevel, InventoryError> {
        if !(0..=MAX_ON_HAND).contains(&on_hand) {
            return Err(InventoryError::Invalid(ApiError::invalid(
                "on_hand",
                "on_hand must be 0 to 1000000000",
            )));
        }
        if !mercato_kernel::id::is_valid("wh", warehouse_id) {
            return Err(InventoryError::NotFound);
        }
        let sku = self.managed_sku(actor, sku).await?;
        self.inner
            .store
            .set_on_hand(&sku, warehouse_id, on_hand, &actor.subject, self.now())
            .await?
            .map_err(Self::refusal)?;
        self.inner.kernel.stock_gate.reopen(&sku);
        self.level(&sku).await
    }

    /// Changes on-hand by `delta` with a reason; recorded in the movement log.
    pub async fn adjust(
        &self,
        actor: &Principal,
        sku: &str,
        warehouse_id: &str,
        delta: i64,
        reason: AdjustReason,
        reference: Option<&str>,
    ) -> Result<StockAfter, InventoryError> {
        let mut v = Validator::new();
        v.check(
            delta != 0 && delta.checked_abs().is_some_and(|a| a <= MAX_ON_HAND),
            "delta",
            "delta must be non-zero and at most 1000000000 in size",
        );
        v.check(
            mercato_kernel::id::is_valid("wh", warehouse_id),
            "warehouse_id",
            "warehouse_id must be a warehouse id",
        );
        if let Some(r) = reference {
            v.check(
                r.chars().count() <= 200,
                "reference",
                "reference is too long",
            );
        }
        v.finish().map_err(InventoryError::Invalid)?;
        let sku = self.managed_sku(actor, sku).await?;
        self.inner.kernel.stock_gate.reopen(&sku);
        self.inner
            .store
            .adjust(
                &sku,
                warehouse_id,
                delta,
                reason.as_str(),
                reference,
                &actor.subject,
                self.now(),
            )
            .await?
            .map_err(Self::refusal)
    }

    /// Stock of a SKU across warehouses.
    pub async fn level(&self, sku: &str) -> Result<StockLevel, InventoryError> {
        let sku = crate::catalog::model::Sku::parse(sku)
            .ok_or(InventoryError::NotFound)?
            .as_str()
            .to_owned();
        let rows = self.inner.store.stock_of(&sku).await?;
        if rows.is_empty() {
            let known = self
                .inner
                .catalog
                .skus(std::slice::from_ref(&sku))
                .await
                .map_err(|e| InventoryError::Unexpected(anyhow::anyhow!("{e}")))?;
            if !known.contains_key(&sku) {
                return Err(InventoryError::NotFound);
            }
        }
        let warehouses: Vec<WarehouseStock> = rows
            .into_iter()
            .map(
                |(warehouse_id, on_hand, reserved, low_stock_threshold)| WarehouseStock {
                    warehouse_id,
                    on_hand,
                    reserved,
                    available: on_hand - reserved,
                    low_stock_threshold,
                },
            )
            .collect();
        let on_hand = warehouses.iter().map(|w| w.on_hand).sum();
        let reserved = warehouses.iter().map(|w| w.reserved).sum();
        Ok(StockLevel {
            sku,
            on_hand,
            reserved,
            available: on_hand - reserved,
            warehouses,
        })
    }

    pub async fn movements(
        &self,
        sku: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Movement)>, InventoryError> {
        let sku = crate::catalog::model::Sku::parse(sku).ok_or(InventoryError::NotFound)?;
        Ok(self
            .inner
            .store
            .movements(sku.as_str(), after_seq, limit)
            .await?)
    }

    /// A checkout's reservations (read by checkout views).
    pub async fn reservations_of(
        db: &mercato_kernel::db::Db,
        checkout_id: &str,
    ) -> Result<Vec<Reservation>, StoreError> {
        InventoryStore::new(db.clone())
            .reservations(checkout_id)
            .await
    }

    /// Checkouts holding active reservations (reconciliation looks for dead ones).
    pub async fn checkouts_with_active_reservations(
        db: &mercato_kernel::db::Db,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        InventoryStore::new(db.clone())
            .checkouts_with_active(limit)
            .await
    }

    pub async fn reservations(
        &self,
        checkout_id: &str,
    ) -> Result<Vec<Reservation>, InventoryError> {
        Ok(self.inner.store.reservations(checkout_id).await?)
    }

    /// All lines or none, inside the caller's transaction (see `InventoryStore::reserve_tx`).
    pub async fn reserve_tx(
        tx: &mut Tx,
        checkout_id: &str,
        lines: &[(String, i64)],
        ship_country: Option<&str>,
        expires_at: Timestamp,
        actor: &str,
        now: Timestamp,
    ) -> Result<Result<Vec<Reservation>, Shortfall>, StoreError> {
        InventoryStore::reserve_tx(tx, checkout_id, lines, ship_country, expires_at, actor, now)
            .await
    }

    /// Releases the checkout's reservations in the caller's transaction and reopens their SKUs
    /// at the hot-SKU gate (early reopening is harmless: the gate only sheds).
    pub async fn release_tx(
        tx: &mut Tx,
        gate: &dyn StockGate,
        checkout_id: &str,
        expired: bool,
        reason: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<Vec<Reservation>, StoreError> {
        let released =
            InventoryStore::release_tx(tx, checkout_id, expired, reason, actor, now).await?;
        for r in &released {
            gate.reopen(&r.sku);
        }
        Ok(released)
    }

    /// Gives back up to `quantity` of the owner's reserved units (see
    /// `InventoryStore::shrink_tx`); returns what was given back.
    #[allow(clippy::too_many_arguments)]
    pub async fn shrink_tx(
        tx: &mut Tx,
        owner: &str,
        quantity: i64,
        reason: &str,
        reference: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<i64, StoreError> {
        InventoryStore::shrink_tx(tx, owner, quantity, reason, reference, actor, now).await
    }

    pub async fn commit_tx(
        tx: &mut Tx,
        checkout_id: &str,
        reference: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<Vec<Reservation>, StoreError> {
        InventoryStore::commit_tx(tx, checkout_id, reference, actor, now).await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn restock_tx(
        tx: &mut Tx,
        gate: &dyn StockGate,
        checkout_id: &str,
        quantities: &HashMap<String, i64>,
        reason: &str,
        reference: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        InventoryStore::restock_tx(tx, checkout_id, quantities, reason, reference, actor, now)
            .await?;
        for sku in quantities.keys() {
            gate.reopen(sku);
        }
        Ok(())
    }

    pub async fn extend_tx(
        tx: &mut Tx,
        checkout_id: &str,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        InventoryStore::extend_tx(tx, checkout_id, until, now).await
    }

    /// Safety net: releases reservations past their own expiry whose checkout did not (the
    /// checkout sweeper normally gets there first). One batch per call.
    pub async fn expire_due(&self) -> anyhow::Result<Outcome> {
        let now = self.now();
        let due = self.inner.store.due_checkouts(now, 100).await?;
        for checkout_id in &due {
            let mut tx = self.inner.store.db().begin().await?;
            Self::release_tx(
                &mut tx,
                &*self.inner.kernel.stock_gate,
                checkout_id,
                true,
                "reservation expired",
                "system",
                now,
            )
            .await?;
            tx.commit().await?;
        }
        Ok(if due.len() >= 100 {
            Outcome::Worked
        } else {
            Outcome::Idle
        })
    }
}

#[async_trait::async_trait]
impl StockLevels for InventoryService {
    async fn available(&self, skus: &[String]) -> anyhow::Result<HashMap<String, i64>> {
        // Sold-out hot SKUs are answered from the gate, without a database read.
        let gate = &self.inner.kernel.stock_gate;
        let (closed, open): (Vec<String>, Vec<String>) =
            skus.iter().cloned().partition(|s| gate.sold_out(s));
        let mut out = if open.is_empty() {
            HashMap::new()
        } else {
            self.inner.store.available(&open).await?
        };
        out.extend(closed.into_iter().map(|s| (s, 0)));
        Ok(out)
    }
}
