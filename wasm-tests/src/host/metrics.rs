//! Metrics defined by the guest. Envoy backs each name with one stat shared by all workers,
//! so the store is process-wide and keyed by name; the ids handed to guests are opaque.

use std::collections::BTreeMap;

use crate::types::{MetricType, Status};

#[derive(Debug)]
struct Metric {
    name: String,
    kind: MetricType,
    value: u64,
    samples: Vec<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    ids: BTreeMap<String, u32>,
    metrics: BTreeMap<u32, Metric>,
}

impl Metrics {
    /// Defines a metric, or returns the id of the one with that name.
    ///
    /// Redefining a name with another kind is a guest bug: `BadArgument`.
    pub(crate) fn define(&mut self, kind: MetricType, name: &str) -> Result<u32, Status> {
        if let Some(id) = self.ids.get(name) {
            return match self.metrics.get(id) {
                Some(metric) if metric.kind == kind => Ok(*id),
                _ => Err(Status::BadArgument),
            };
        }
        let id = u32::try_from(self.metrics.len() + 1).map_err(|_| Status::InternalFailure)?;
        self.ids.insert(name.to_owned(), id);
        let metric = Metric {
            name: name.to_owned(),
            kind,
            value: 0,
            samples: Vec::new(),
        };
        self.metrics.insert(id, metric);
        Ok(id)
    }

    /// Envoy: counters only go up (offset <= 0 is `BadArgument`), gauges go both ways,
    /// histograms cannot be incremented.
    pub(crate) fn increment(&mut self, id: u32, offset: i64) -> Status {
        let Some(metric) = self.metrics.get_mut(&id) else {
            return Status::NotFound;
        };
        match metric.kind {
            MetricType::Counter if offset > 0 => {
                metric.value = metric.value.saturating_add(offset.unsigned_abs());
                Status::Ok
            }
            MetricType::Gauge if offset >= 0 => {
                metric.value = metric.value.saturating_add(offset.unsigned_abs());
                Status::Ok
            }
            MetricType::Gauge => {
                metric.value = metric.value.saturating_sub(offset.unsigned_abs());
                Status::Ok
            }
            MetricType::Counter | MetricType::Histogram => Status::BadArgument,
        }
    }

    /// Envoy: counters add, gauges set, histograms record a sample.
    pub(crate) fn record(&mut self, id: u32, value: u64) -> Status {
        let Some(metric) = self.metrics.get_mut(&id) else {
            return Status::NotFound;
        };
        match metric.kind {
            MetricType::Counter => metric.value = metric.value.saturating_add(value),
            MetricType::Gauge => metric.value = value,
            MetricType::Histogram => metric.samples.push(value),
        }
        Status::Ok
    }

    pub(crate) fn get(&self, id: u32) -> Result<u64, Status> {
        let metric = self.metrics.get(&id).ok_or(Status::NotFound)?;
        match metric.kind {
            MetricType::Counter | MetricType::Gauge => Ok(metric.value),
            MetricType::Histogram => Err(Status::BadArgument),
        }
    }

    pub(crate) fn value_by_name(&self, name: &str) -> Option<(MetricType, u64)> {
        let metric = self.metrics.get(self.ids.get(name)?)?;
        Some((metric.kind, metric.value))
    }

    pub(crate) fn samples_by_name(&self, name: &str) -> Vec<u64> {
        self.ids
            .get(name)
            .and_then(|id| self.metrics.get(id))
            .map(|metric| metric.samples.clone())
            .unwrap_or_default()
    }

    pub(crate) fn names(&self) -> Vec<(String, MetricType)> {
        self.metrics
            .values()
            .map(|metric| (metric.name.clone(), metric.kind))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_same_id_and_envoy_rules() {
        let mut metrics = Metrics::default();
        let counter = metrics.define(MetricType::Counter, "hits").unwrap();
        assert_eq!(metrics.define(MetricType::Counter, "hits"), Ok(counter));
        assert_eq!(
            metrics.define(MetricType::Gauge, "hits"),
            Err(Status::BadArgument)
        );

        assert_eq!(metrics.increment(counter, 2), Status::Ok);
        assert_eq!(metrics.increment(counter, 0), Status::BadArgument);
        assert_eq!(metrics.record(counter, 3), Status::Ok);
        assert_eq!(metrics.get(counter), Ok(5));

        let gauge = metrics.define(MetricType::Gauge, "inflight").unwrap();
        assert_eq!(metrics.increment(gauge, 4), Status::Ok);
        assert_eq!(metrics.increment(gauge, -1), Status::Ok);
        assert_eq!(metrics.get(gauge), Ok(3));
        assert_eq!(metrics.record(gauge, 10), Status::Ok);
        assert_eq!(metrics.get(gauge), Ok(10));

        let histogram = metrics.define(MetricType::Histogram, "size").unwrap();
        assert_eq!(metrics.record(histogram, 7), Status::Ok);
        assert_eq!(metrics.increment(histogram, 1), Status::BadArgument);
        assert_eq!(metrics.get(histogram), Err(Status::BadArgument));
        assert_eq!(metrics.samples_by_name("size"), vec![7]);

        assert_eq!(metrics.get(999), Err(Status::NotFound));
    }
}
