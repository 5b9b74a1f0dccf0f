//! The QEMU command line: a q35 TCG guest whose igb NICs hang off an isolated hub.

use std::path::Path;

use super::guest::{HOSTROOT_TAG, RESULTS_TAG};
use super::VmSpec;

/// Files the guest boots from and talks through.
pub struct BootFiles<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// The run folder, shared read-write with tag `results`.
    pub run_dir: &'a Path,
    /// Where the serial console is written.
    pub console: &'a Path,
}

/// Set to `1` for all kernel messages on the console (slower boots under TCG).
pub const VERBOSE_ENV: &str = "SRIOV_LAB_VERBOSE";

/// True when [`VERBOSE_ENV`] asks for all kernel messages.
pub fn verbose() -> bool {
    std::env::var(VERBOSE_ENV).is_ok_and(|v| v == "1")
}

/// The kernel command line.
pub fn kernel_cmdline(spec: &VmSpec) -> String {
    let mut s = String::from("console=ttyS0 panic=-1 rdinit=/init");
    s.push_str(if verbose() {
        " loglevel=7"
    } else {
        " quiet loglevel=4"
    });
    if spec.iommu {
        s.push_str(" intel_iommu=on");
    }
    s
}

/// Arguments for `qemu-system-x86_64` (without the program name).
pub fn args(spec: &VmSpec, files: &BootFiles<'_>) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&[
        "-accel",
        "tcg",
        "-machine",
        "q35",
        "-cpu",
        "max",
        "-m",
        "1024",
        "-smp",
        "2",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    a.push("-serial".into());
    a.push(format!("file:{}", files.console.display()));
    a.push("-kernel".into());
    a.push(files.kernel.display().to_string());
    a.push("-initrd".into());
    a.push(files.initrd.display().to_string());
    a.push("-append".into());
    a.push(kernel_cmdline(spec));

    if spec.iommu {
        // Must come before the devices it translates for.
        a.push("-device".into());
        a.push("intel-iommu".into());
    }
    if spec.numa {
        for (i, size) in ["512M", "512M"].iter().enumerate() {
            a.push("-object".into());
            a.push(format!("memory-backend-ram,id=mem{i},size={size}"));
            a.push("-numa".into());
            a.push(format!("node,nodeid={i},cpus={i},memdev=mem{i}"));
        }
        a.push("-device".into());
        a.push("pxb-pcie,id=pxb1,bus_nr=128,numa_node=1,bus=pcie.0".into());
    }
    for i in 0..spec.pfs {
        let bus = if spec.numa && i % 2 == 1 {
            "pxb1"
        } else {
            "pcie.0"
        };
        a.push("-device".into());
        a.push(format!(
            "pcie-root-port,id=rp{i},bus={bus},chassis={},slot={i}",
            i + 1
        ));
        a.push("-netdev".into());
        a.push(format!("hubport,id=n{i},hubid=0"));
        a.push("-device".into());
        // Fixed MACs (52:54:00 is QEMU's prefix; 5a for the lab) keep runs reproducible.
        a.push(format!(
            "igb,bus=rp{i},netdev=n{i},mac=52:54:00:5a:00:{:02x},romfile=",
            i + 1
        ));
    }

    let share = |id: &str, path: &Path, tag: &str, ro: bool| {
        [
            "-fsdev".to_string(),
            format!(
                "local,id={id},path={},security_model=none{}multidevs=remap",
                // QEMU option values escape ',' as ',,'.
                path.display().to_string().replace(',', ",,"),
                if ro { ",readonly=on," } else { "," }
            ),
            "-device".to_string(),
            format!("virtio-9p-pci,bus=pcie.0,fsdev={id},mount_tag={tag}"),
        ]
    };
    a.extend(share("fs0", Path::new("/"), HOSTROOT_TAG, true));
    a.extend(share("fs1", files.run_dir, RESULTS_TAG, false));
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numa_puts_second_pf_on_pxb() {
        let spec = VmSpec {
            pfs: 2,
            numa: true,
            iommu: true,
            ..VmSpec::default()
        };
        let p = Path::new("/x");
        let a = args(
            &spec,
            &BootFiles {
                kernel: p,
                initrd: p,
                run_dir: p,
                console: p,
            },
        )
        .join(" ");
        assert!(a.contains("pcie-root-port,id=rp0,bus=pcie.0"));
        assert!(a.contains("pcie-root-port,id=rp1,bus=pxb1"));
        assert!(a.contains("intel-iommu"));
        assert!(a.contains("intel_iommu=on"));
        assert!(a.contains("-nodefaults"));
        assert!(!a.contains("-netdev user") && !a.contains("-nic"));
    }
}
