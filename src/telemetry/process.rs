//! The standard `process_*` metrics of the exporter's own process (as the Go client names and
//! describes them), read from `/proc` on each scrape: CPU seconds, resident and virtual memory,
//! open and maximum file descriptors, threads and start time. Linux only; elsewhere none are
//! exported.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// The process collector.
#[derive(Debug, Default)]
pub struct ProcessCollector;

#[cfg(target_os = "linux")]
impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use procfs::process::{LimitValue, Process};
        use procfs::WithCurrentSystemInfo;
        let Ok(me) = Process::myself() else {
            return Ok(());
        };
        let gauge = |enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64| {
            let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(v).encode(m)
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            let cpu = (stat.utime + stat.stime) as f64 / ticks;
            let m = enc.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(cpu).encode(m)?;
            gauge(
                &mut enc,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                stat.rss_bytes().get() as f64,
            )?;
            gauge(
                &mut enc,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                stat.vsize as f64,
            )?;
            gauge(
                &mut enc,
                "process_threads",
                "Number of OS threads in the process.",
                stat.num_threads as f64,
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                gauge(
                    &mut enc,
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    boot as f64 + stat.starttime as f64 / ticks,
                )?;
            }
        }
        if let Ok(n) = me.fd_count() {
            gauge(
                &mut enc,
                "process_open_fds",
                "Number of open file descriptors.",
                n as f64,
            )?;
        }
        if let Ok(limits) = me.limits() {
            if let LimitValue::Value(v) = limits.max_open_files.soft_limit {
                gauge(
                    &mut enc,
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                    v as f64,
                )?;
            }
            if let LimitValue::Value(v) = limits.max_address_space.soft_limit {
                gauge(
                    &mut enc,
                    "process_virtual_memory_max_bytes",
                    "Maximum amount of virtual memory available in bytes.",
                    v as f64,
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
impl Collector for ProcessCollector {
    fn encode(&self, _enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}
