//! Invalid policy files: every error with file:line:col, all at once, and nothing starts.

use std::process::Command;

use sysmgr_tests::{Lab, bin};

#[test]
fn invalid_policies_report_every_error_and_start_nothing() {
    let lab = Lab::new("1s");
    let marker = lab.path("started").display().to_string();
    // A valid service that would leave a marker if anything started.
    lab.service("good", &["--report", &marker], "");
    lab.write(
        "bad1.toml",
        r#"command = ["/bin/true"]
restart = ["stateless"]
colour = "blue"
stop-timeout = "soon"

[ha.single-sup.primary]
action = "stateful"
max-retries = 3
min-lifetime = "100ms"
"#,
    );
    lab.write(
        "bad2.toml",
        r#"command = ["no-such-program-xyz"]
depends-on = ["ghost"]
readiness = "maybe"
"#,
    );
    lab.write("bad3.toml", "command = [\"/bin/true\"\nname = 3\n");
    let expect = [
        format!(
            "{}:3:1: unknown field `colour` at top level",
            lab.path("bad1.toml").display()
        ),
        format!(
            "{}:4:16: `stop-timeout` = \"soon\" is not a duration",
            lab.path("bad1.toml").display()
        ),
        format!(
            "{}:7:10: action \"stateful\" but the service does not list \"stateful\" in `restart`",
            lab.path("bad1.toml").display()
        ),
        format!(
            "{}:9:16: min-lifetime 100ms is below the floor of 1s",
            lab.path("bad1.toml").display()
        ),
        format!(
            "{}:1:12: program \"no-such-program-xyz\" not found",
            lab.path("bad2.toml").display()
        ),
        format!(
            "{}:3:13: `readiness` = \"maybe\" is not one of: notify, none",
            lab.path("bad2.toml").display()
        ),
        format!(
            "{}:2:15: depends-on \"ghost\": no such service",
            lab.path("bad2.toml").display()
        ),
        format!("{}:2:", lab.path("bad3.toml").display()),
    ];
    let out = Command::new(bin("sysmgr"))
        .arg("boot")
        .arg("--config")
        .arg(lab.config())
        .output()
        .expect("boot");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for e in &expect {
        assert!(err.contains(e.as_str()), "missing {e:?} in:\n{err}");
    }
    assert!(err.contains("8 error(s); nothing was started"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    let mut sorted = lines[..8].to_vec();
    sorted.sort_by_key(|l| {
        let mut p = l.rsplit(".toml:").next().unwrap_or("").split(':');
        (
            l.split(".toml:").next().map(str::to_string),
            p.next().and_then(|x| x.parse::<u32>().ok()),
            p.next().and_then(|x| x.parse::<u32>().ok()),
        )
    });
    assert_eq!(lines[..8], sorted[..], "errors in file, line, column order");
    assert!(!std::path::Path::new(&marker).exists(), "nothing may start");
    assert!(!lab.path("data/sysmgr.sock").exists());

    // `sysmgr policy check DIR` runs the same validation alone.
    let out = Command::new(bin("sysmgr"))
        .args(["policy", "check"])
        .arg(lab.dir.path())
        .output()
        .expect("check");
    let err2 = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(err, err2);

    // Fixing the files makes the check pass.
    for f in ["bad1.toml", "bad2.toml", "bad3.toml"] {
        std::fs::remove_file(lab.path(f)).expect("rm");
    }
    let out = Command::new(bin("sysmgr"))
        .args(["policy", "check"])
        .arg(lab.dir.path())
        .output()
        .expect("check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 service policies valid"));
}

#[test]
fn the_default_lab_is_valid() {
    let root = sysmgr_tests::target_dir().join("../../policies");
    let out = Command::new(bin("sysmgr"))
        .args(["policy", "check"])
        .arg(&root)
        .output()
        .expect("check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn duplicate_sap_names_and_numbers_are_errors() {
    let lab = Lab::new("1s");
    lab.write(
        "a.toml",
        "command = [\"/bin/true\"]\n[saps]\nshared = 100\n",
    );
    lab.write(
        "b.toml",
        "command = [\"/bin/true\"]\n[saps]\nshared = 101\nother = 100\nsysmgr = 102\n",
    );
    let out = Command::new(bin("sysmgr"))
        .args(["policy", "check"])
        .arg(lab.dir.path())
        .output()
        .expect("check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let b = lab.path("b.toml").display().to_string();
    assert!(
        err.contains(&format!(
            "{b}:3:1: SAP \"shared\" is also declared by service \"a\""
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{b}:4:1: SAP number 100 is also used by SAP \"shared\" of service \"a\""
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{b}:5:1: SAP name \"sysmgr\" is reserved")),
        "{err}"
    );
}
