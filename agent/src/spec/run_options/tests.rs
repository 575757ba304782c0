//! The run-options parser over every supported flag, in both forms, and its refusals.

use super::*;
use oci_spec::runtime::{Capability, PosixRlimitType};

fn ok(text: &str) -> RunOptions {
    parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn accepts_supported_flags_in_every_form() {
    let cases: &[(&str, RunOptions)] = &[
        ("", RunOptions::default()),
        ("--rm", RunOptions { remove: true, ..Default::default() }),
        ("--rm --workdir /", RunOptions { remove: true, workdir: Some("/".into()), ..Default::default() }),
        ("--workdir=/app", RunOptions { workdir: Some("/app".into()), ..Default::default() }),
        ("-w /app", RunOptions { workdir: Some("/app".into()), ..Default::default() }),
        ("-w=/app", RunOptions { workdir: Some("/app".into()), ..Default::default() }),
        ("-w/app", RunOptions { workdir: Some("/app".into()), ..Default::default() }),
        ("'--workdir' '/my dir'", RunOptions { workdir: Some("/my dir".into()), ..Default::default() }),
        (
            "-e A=1 --env B=two=2 --env=C= -eD=4",
            RunOptions {
                env: vec![
                    ("A".into(), "1".into()),
                    ("B".into(), "two=2".into()),
                    ("C".into(), "".into()),
                    ("D".into(), "4".into()),
                ],
                ..Default::default()
            },
        ),
    ];
    for (text, want) in cases {
        assert_eq!(&ok(text), want, "{text}");
    }
}

/// Each flag, written `--flag value` and `--flag=value` (and short forms), gives the same result.
#[test]
fn every_flag_in_both_forms() {
    let flags: &[(&str, &str, &str)] = &[
        ("--env-file", "", "vars.env"),
        ("--user", "-u", "app:video"),
        ("--group-add", "", "44"),
        ("--entrypoint", "", "/bin/cat"),
        ("--hostname", "-h", "worker-1"),
        ("--cap-add", "", "NET_ADMIN"),
        ("--cap-drop", "", "ALL"),
        ("--security-opt", "", "no-new-privileges=false"),
        ("--tmpfs", "", "/scratch:size=64m,mode=1777"),
        ("--volume", "-v", "/data:/data:ro"),
        ("--mount", "", "type=bind,source=/data,target=/d,readonly"),
        ("--device", "", "/dev/fuse"),
        ("--shm-size", "", "256m"),
        ("--ulimit", "", "nofile=4096:8192"),
        ("--memory", "-m", "512m"),
        ("--cpus", "", "1.5"),
        ("--cpu-shares", "-c", "512"),
        ("--cpuset-cpus", "", "0-1"),
        ("--pids-limit", "", "100"),
        ("--ipc", "", "host"),
        ("--network", "", "none"),
        ("--publish", "-p", "127.0.0.1:8080:80/udp"),
        ("--dns", "", "192.0.2.1"),
        ("--dns-search", "", "example.test"),
        ("--dns-option", "", "ndots:2"),
        ("--add-host", "", "db:10.0.0.1"),
        ("--pid", "", "host"),
        ("--sysctl", "", "kernel.shmmax=1000000"),
        ("--stop-signal", "", "SIGUSR1"),
        ("--stop-timeout", "", "30"),
        ("--label", "-l", "team=hpc"),
        ("--gpus", "", "device=0,1"),
        ("--memory-reservation", "", "64m"),
        ("--cpu-quota", "", "50000"),
        ("--cpu-period", "", "50000"),
        ("--cpuset-mems", "", "0"),
        ("--blkio-weight", "", "500"),
        ("--oom-score-adj", "", "500"),
        ("--cgroupns", "", "host"),
        ("--uts", "", "host"),
        ("--domainname", "", "example.test"),
        ("--platform", "", "linux/amd64"),
        ("--pull", "", "always"),
        ("--name", "", "web-1"),
        ("--runtime", "", "nvidia"),
    ];
    for (long, short, value) in flags {
        let spaced = ok(&format!("{long} '{value}'"));
        assert_ne!(spaced, RunOptions::default(), "{long} changed nothing");
        assert_eq!(ok(&format!("{long}='{value}'")), spaced, "{long}=");
        if !short.is_empty() {
            assert_eq!(ok(&format!("{short} '{value}'")), spaced, "{short}");
            assert_eq!(ok(&format!("{short}'{value}'")), spaced, "{short} attached");
        }
    }
    // Accepted and without effect: a batch task has no terminal, no one attached.
    for flag in
        ["-t", "--tty", "-i", "--interactive", "-d", "--detach", "-it", "-dit", "--expose 8080/udp", "--runtime runc"]
    {
        assert_eq!(ok(flag), RunOptions::default(), "{flag}");
    }
    for flag in ["--privileged", "--read-only", "--init", "--rm"] {
        assert_ne!(ok(flag), RunOptions::default(), "{flag}");
        assert_eq!(ok(&format!("{flag}=true")), ok(flag), "{flag}=true");
        assert_eq!(ok(&format!("{flag}=false")), RunOptions::default(), "{flag}=false");
    }
}

#[test]
fn values_land_where_they_belong() {
    let o = ok("--memory 512m --memory-swap 1g --cpus 0.5 --cpu-shares 256 --cpuset-cpus 0 --pids-limit 64 \
                --shm-size 1g --ulimit nofile=100:200 --ulimit memlock=-1 -u app:video --group-add 44 \
                --cap-add sys_ptrace --cap-drop CAP_NET_RAW --read-only --init --stop-signal 10 --stop-timeout 3 \
                --tmpfs /t --tmpfs /u:size=1k --mount type=tmpfs,target=/v,tmpfs-size=2k,tmpfs-mode=700 \
                -v /a:/b --device /dev/fuse:/dev/f:rw --network none --sysctl net.ipv4.ip_forward=0 -l a=b -l c");
    let r = &o.resources;
    assert_eq!(
        (r.memory, r.memory_swap, r.cpu_quota, r.cpu_shares),
        (Some(512 << 20), Some(1 << 30), Some(50_000), Some(256))
    );
    assert_eq!((r.cpuset_cpus.as_deref(), r.pids_limit), (Some("0"), Some(64)));
    assert_eq!(o.shm_size, Some(1 << 30));
    assert_eq!(
        o.ulimits,
        [(PosixRlimitType::RlimitNofile, 100, 200), (PosixRlimitType::RlimitMemlock, u64::MAX, u64::MAX)]
    );
    assert_eq!(o.user, Some(UserOpt { user: IdRef::Name("app".into()), group: Some(IdRef::Name("video".into())) }));
    assert_eq!(o.group_add, [IdRef::Id(44)]);
    assert_eq!(o.cap_add.caps, [Capability::SysPtrace]);
    assert_eq!(o.cap_drop.caps, [Capability::NetRaw]);
    assert!(o.read_only && o.init);
    assert_eq!((o.stop_signal, o.stop_timeout), (Some(10), Some(3)));
    assert_eq!(
        o.mounts,
        [
            MountOpt::Tmpfs { target: "/t".into(), options: vec![] },
            MountOpt::Tmpfs { target: "/u".into(), options: vec!["size=1024".into()] },
            MountOpt::Tmpfs { target: "/v".into(), options: vec!["size=2048".into(), "mode=700".into()] },
            MountOpt::Bind { source: "/a".into(), target: "/b".into(), readonly: false, propagation: None },
        ]
    );
    assert_eq!(o.devices, [DeviceOpt { host: "/dev/fuse".into(), container: "/dev/f".into(), access: "rw".into() }]);
    assert_eq!(o.network.mode, NetworkMode::None);
    assert_eq!(o.labels, [("a".into(), "b".into()), ("c".into(), String::new())]);
    assert_eq!(ok("--pids-limit -1").resources.pids_limit, None);
    assert_eq!(ok("--memory 64m --memory-swap -1").resources.memory_swap, Some(-1));
    assert!(ok("--security-opt no-new-privileges=false").allow_new_privileges);
    assert!(!ok("--security-opt no-new-privileges:true").allow_new_privileges);
    assert_eq!(ok("--entrypoint ''").entrypoint.as_deref(), Some(""));
    assert_eq!(ok("--entrypoint '/bin/my tool'").entrypoint.as_deref(), Some("/bin/my tool"), "one executable");
    assert_eq!(ok("--memory 64m --memory-swap 0").resources.memory_swap, None, "0 is unset");
    assert_eq!(ok("-c 0").resources.cpu_shares, None, "0 is unset");
    assert_eq!(ok("--security-opt seccomp=unconfined").seccomp, Seccomp::Unconfined);
    assert_eq!(ok("--security-opt seccomp=/p/x.json").seccomp, Seccomp::Profile("/p/x.json".into()));
    assert_eq!(ok("--rm").seccomp, Seccomp::Default);

    let o = ok("-m 1g --memory-reservation 256m --cpu-quota 20000 --cpu-period 50000 --cpuset-mems 0-1 \
                --blkio-weight 300 --oom-score-adj -5 --oom-kill-disable --cgroupns host --uts host \
                --platform linux/x86_64 --pull never --name /job_1.a --runtime nvidia");
    let r = &o.resources;
    assert_eq!((r.memory_reservation, r.cpu_quota, r.cpu_period), (Some(256 << 20), Some(20_000), Some(50_000)));
    assert_eq!((r.cpuset_mems.as_deref(), r.blkio_weight), (Some("0-1"), Some(300)));
    assert_eq!((o.oom_score_adj, o.oom_kill_disable), (Some(-5), true));
    assert_eq!((o.cgroupns, o.uts), (Namespace::Host, Namespace::Host));
    let p = o.platform.unwrap();
    assert_eq!((p.os.as_str(), p.architecture.as_str(), p.variant), ("linux", "amd64", None));
    assert_eq!(ok("--platform linux/aarch64").platform.unwrap().variant.as_deref(), Some("v8"));
    assert_eq!(o.pull, Some(crate::model::PullPolicy::Never));
    assert_eq!(o.name.as_deref(), Some("job_1.a"), "docker's leading / is dropped");
    assert_eq!(o.gpus, Some(crate::devices::gpus::parse("all").unwrap()), "--runtime nvidia is --gpus all");
    let named = ok("--runtime nvidia --gpus 1").gpus;
    assert_eq!(named, Some(crate::devices::gpus::parse("1").unwrap()), "--gpus says which, in either order");
    assert_eq!(ok("--gpus 1 --runtime nvidia").gpus, named);
    assert_eq!(ok("--cpu-quota -1").resources.cpu_quota, None, "-1: no quota");
    assert_eq!(ok("--blkio-weight 0").resources.blkio_weight, None);
}

#[test]
fn refuses_by_name() {
    let cases = [
        ("--rm --bogus=1", "--bogus"),
        ("-x", "-x"),
        ("-ix", "-i"),
        ("-itx", "-i"),
        ("--detach=maybe", "--detach"),
        ("--restart always", "--restart"),
        ("--restart=on-failure:3", "--restart"),
        ("--health-cmd 'curl x'", "--health-cmd"),
        ("--health-interval 5s", "--health-interval"),
        ("--no-healthcheck", "--no-healthcheck"),
        ("--log-driver none", "--log-driver"),
        ("--log-opt max-size=10m", "--log-opt"),
        ("--userns host", "--userns"),
        ("--memory-reservation 1m", "--memory-reservation"),
        ("--memory 64m --memory-reservation 128m", "--memory-reservation"),
        ("--cpu-quota 999", "--cpu-quota"),
        ("--cpu-period 999", "--cpu-period"),
        ("--cpu-period 1000001", "--cpu-period"),
        ("--cpus 1 --cpu-quota 50000", "--cpus"),
        ("--cpus 1 --cpu-period 50000", "--cpus"),
        ("--cpuset-mems 1-0", "--cpuset-mems"),
        ("--blkio-weight 5", "--blkio-weight"),
        ("--oom-score-adj 1001", "--oom-score-adj"),
        ("--oom-score-adj -1001", "--oom-score-adj"),
        ("--oom-kill-disable", "--oom-kill-disable"),
        ("--cgroupns container:x", "--cgroupns"),
        ("--uts container:x", "--uts"),
        ("--uts host --hostname h", "--uts"),
        ("--uts host --domainname d", "--uts"),
        ("--domainname bad_name", "--domainname"),
        ("--platform linux", "--platform"),
        ("--platform linux/amd64/v2/x", "--platform"),
        ("--pull sometimes", "--pull"),
        ("--name -x", "--name"),
        ("--name 'a b'", "--name"),
        ("--runtime kata", "--runtime"),
        ("--expose 0", "--expose"),
        ("--expose 90-80", "--expose"),
        ("--expose 80/icmp", "--expose"),
        ("--workdir", "--workdir"),
        ("--workdir relative", "--workdir"),
        ("--rm=maybe", "--rm"),
        ("-e NOVALUE", "-e"),
        ("-e AZ_BATCH_NODE_ID=x", "-e"),
        ("busybox", "busybox"),
        ("--rm \"unclosed", "run_options"),
        ("--env-file /etc/passwd", "--env-file"),
        ("--env-file ../x", "--env-file"),
        ("-u 4294967295", "-u"),
        ("--user 2147483648:0", "--user"),
        ("-u bad/name", "-u"),
        ("--cap-add CAP_BOGUS", "--cap-add"),
        ("--security-opt apparmor=unconfined", "--security-opt"),
        ("--security-opt seccomp=p.json", "--security-opt"),
        ("--security-opt seccomp=/a/../p.json", "--security-opt"),
        ("--tmpfs rel", "--tmpfs"),
        ("--tmpfs /t:exec,bogus", "--tmpfs"),
        ("-v named:/data", "-v"),
        ("-v /a", "-v"),
        ("-v /a:/b:z", "-v"),
        ("-v /a:rel", "-v"),
        ("--mount type=volume,target=/x", "--mount"),
        ("--mount type=bind,target=/x", "--mount"),
        ("--mount type=tmpfs,source=/a,target=/x", "--mount"),
        ("--mount type=bind,src=/a,target=/x,consistency=cached", "--mount"),
        ("--device /etc/passwd", "--device"),
        ("--device /dev/a:/dev/b:rwx", "--device"),
        ("--gpus capabilities=compute", "--gpus"),
        ("--shm-size 0", "--shm-size"),
        ("--shm-size lots", "--shm-size"),
        ("--ulimit nofile=2:1", "--ulimit"),
        ("-m 1m", "-m"),
        ("--memory-swap 1g", "--memory-swap"),
        ("--memory 1g --memory-swap 512m", "--memory-swap"),
        ("--cpus 0", "--cpus"),
        ("--cpu-shares 1", "--cpu-shares"),
        ("--cpuset-cpus x", "--cpuset-cpus"),
        ("--pids-limit -5", "--pids-limit"),
        ("--ipc container:x", "--ipc"),
        ("--network container:x", "--network"),
        ("--network host -p 80:80", "--publish"),
        ("--network none -p 80:80", "--publish"),
        ("-p 80:80 -p 80:81", "-p"),
        ("--network host --sysctl net.ipv4.ip_forward=1", "--sysctl"),
        ("--pid container:x", "--pid"),
        ("--sysctl kernel.panic=1", "--sysctl"),
        ("--stop-signal SIGNOPE", "--stop-signal"),
        ("--stop-timeout -1", "--stop-timeout"),
        ("-l berth.task-id=x", "-l"),
        ("--shm-size 1m --ipc host", "--shm-size"),
        ("--tmpfs /x --tmpfs /x", "--mount"),
        ("--hostname bad_name", "--hostname"),
        ("--tmpfs /proc", "--mount"),
        ("--tmpfs //sys/./fs", "--mount"),
        ("-v /a:/", "--mount"),
        ("--tmpfs /a --tmpfs /a/", "--mount"),
        ("--device /dev/fuse:/var/x", "--device"),
        ("--device /dev/fuse:/dev/shm/x", "--device"),
        ("--stop-timeout 601", "--stop-timeout"),
        ("--ipc host --sysctl kernel.shmmax=1", "--sysctl"),
    ];
    for (text, flag) in cases {
        match parse(text) {
            Err(SpecError::RunOption { flag: f, reason }) => {
                assert_eq!(f, flag, "{text}: {reason}");
                assert!(!reason.is_empty());
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

/// Random flag soup never panics: every input parses or is refused by name.
#[test]
fn fuzz_never_panics() {
    let words = [
        "--rm",
        "-e",
        "A=1",
        "=",
        "-",
        "--",
        "-u",
        "0:0",
        ":",
        "--mount",
        "type=bind",
        "type=tmpfs,target=/x",
        ",,,",
        "--tmpfs",
        "/x:size=",
        "-v",
        "/a:/b:ro:x",
        "--ulimit",
        "nofile=-1:",
        "--memory",
        "9999999999999p",
        "--cpus",
        "1e309",
        "--device",
        "/dev/",
        "--sysctl",
        "net.",
        "-w",
        "/",
        "\u{e9}",
        "-\u{e9}x",
        "--label",
        "''",
        "--stop-signal",
        "-1",
        "--cpuset-cpus",
        "1-",
        "--security-opt",
        "seccomp",
        "--shm-size",
        ".",
        "--init=",
    ];
    // A small deterministic generator (xorshift), so a failure reproduces.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..20_000 {
        let mut text = String::new();
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = (state % 6) as usize;
        for i in 0..n {
            let pick = usize::try_from(state >> (i * 8)).unwrap() % words.len();
            if state >> (40 + i) & 1 == 1 {
                text.push_str(words[pick]);
            } else {
                text.push(' ');
                text.push_str(words[pick]);
            }
        }
        if let Err(e) = parse(&text) {
            assert!(matches!(e, SpecError::RunOption { .. }), "{text:?}: {e:?}");
        }
    }
}

#[test]
fn network_flags_land_in_the_request() {
    let o = ok("-p 8080:80 -p 127.0.0.1:5353:53/udp --dns 192.0.2.1 --dns 192.0.2.2 --dns-search a.test \
                --dns-opt ndots:2 --add-host db:10.0.0.1 --add-host=cache=10.0.0.2 --sysctl net.ipv4.ip_forward=1");
    let n = &o.network;
    assert_eq!(n.mode, NetworkMode::Bridge);
    assert_eq!(n.publish.len(), 2);
    assert_eq!(n.publish[1].to_string(), "127.0.0.1:5353:53/udp");
    assert_eq!(n.dns.servers.len(), 2);
    assert_eq!(
        (n.dns.search.as_slice(), n.dns.options.as_slice()),
        (&["a.test".to_string()][..], &["ndots:2".to_string()][..])
    );
    assert_eq!(n.extra_hosts.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(), ["db", "cache"]);
    assert_eq!(ok("--network host --dns 192.0.2.1").network.mode, NetworkMode::Host);
}
