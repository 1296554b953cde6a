//! `cost:`: what one GPU costs an hour, so that capacities can be priced.

use serde::{Deserialize, Serialize};

/// The price of one GPU-hour of the node's accelerator, in a currency the report names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Price of one GPU for one hour.
    pub gpu_hour: f64,
    /// ISO 4217 code the price is in (`USD`, `EUR`).
    pub currency: String,
}

/// Hours in an average month (365.25 × 24 / 12), as GPU rental prices a month.
pub const HOURS_PER_MONTH: f64 = 730.5;
