//! Fraud checks run by the checkout saga before charging: pure rules over the order amount
//! and the customer's recent payment velocity. Decisions: allow, review (charge but flag the
//! order), block (nothing charged, stock released, 403 `fraud_blocked`). Emits `fraud.flagged`
//! for review and block decisions (written by the saga with its step).
//!
//! Rules (thresholds from config; the velocity signal comes from payments): total above `fraud_block_amount` → block; payment attempts
//! by the customer in the last hour above `fraud_max_attempts_per_hour` → block; total above
//! `fraud_review_amount` → review.

use mercato_kernel::Kernel;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Review(String),
    Block(String),
}

/// Thresholds.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    pub block_amount: i64,
    pub review_amount: i64,
    pub max_attempts_per_hour: i64,
}

/// The decision for an order total given the customer's attempts in the last hour.
pub fn decide(rules: Rules, total: i64, attempts_last_hour: i64) -> Decision {
    if total > rules.block_amount {
        return Decision::Block(format!("order total {total} above {}", rules.block_amount));
    }
    if attempts_last_hour > rules.max_attempts_per_hour {
        return Decision::Block(format!(
            "{attempts_last_hour} payment attempts in the last hour"
        ));
    }
    if total > rules.review_amount {
        return Decision::Review(format!("order total {total} above {}", rules.review_amount));
    }
    Decision::Allow
}

#[derive(Clone)]
pub struct FraudService {
    rules: Rules,
}

impl FraudService {
    pub fn new(kernel: &Kernel) -> FraudService {
        let s = &kernel.settings;
        FraudService {
            rules: Rules {
                block_amount: s.fraud_block_amount,
                review_amount: s.fraud_review_amount,
                max_attempts_per_hour: s.fraud_max_attempts_per_hour,
            },
        }
    }

    /// Assesses a payment about to be charged (one indexed count: well under a millisecond).
    /// Decides for an order total given the customer's payment attempts in the last hour
    /// (a signal the payments module provides: fraud never reads its tables).
    pub fn assess(&self, total: i64, attempts_last_hour: i64) -> Decision {
        let started = std::time::Instant::now();
        let d = decide(self.rules, total, attempts_last_hour);
        metrics::histogram!("fraud_decision_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("fraud_decisions_total", "decision" => match d {
            Decision::Allow => "allow",
            Decision::Review(_) => "review",
            Decision::Block(_) => "block",
        })
        .increment(1);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Rules = Rules {
        block_amount: 1000,
        review_amount: 500,
        max_attempts_per_hour: 3,
    };

    #[test]
    fn rules_in_order_of_severity() {
        assert_eq!(decide(R, 100, 0), Decision::Allow);
        assert!(matches!(decide(R, 600, 0), Decision::Review(_)));
        assert!(matches!(decide(R, 1001, 0), Decision::Block(_)));
        assert!(matches!(decide(R, 100, 4), Decision::Block(_)));
        assert_eq!(decide(R, 500, 3), Decision::Allow);
    }
}
