#!/usr/bin/env bash
# Runs a statically linked x86-64 Linux binary (a test, or a `cargo test --no-run` test binary) on
# an emulated CPU with AVX-512 and VNNI, so those kernels can be tested on a machine without them:
# QEMU's TCG has no AVX-512, but Bochs emulates it (`cpu: model=tigerlake`).
# The binary boots as the only program of a Debian kernel + initramfs, from an isolinux ISO, inside
# headless Bochs; its output comes back over the emulated serial port, and this script exits with
# the binary's exit status.
#
#   scripts/test-avx512.sh --setup-only           installs Bochs & co., fetches kernel + busybox
#   scripts/test-avx512.sh [OPTIONS] BINARY [ARGS...]
#     --cpu MODEL      Bochs CPU model (default tigerlake; corei7_icelake_u also has AVX-512 VNNI;
#                      sapphire_rapids adds AVX512_BF16 and runs on Bochs 3.0, fetched from trixie)
#     --env K=V        environment variable for BINARY (repeatable)
#     --mem MB         guest memory (default 1024)
#     --timeout SECS   wall-clock limit for the whole boot + run (default 1200)
#     --keep DIR       keep the work dir (ISO, bochsrc, serial log) in DIR
#
# Also usable as a cargo runner (one boot per test binary):
#   RUSTFLAGS='-C target-feature=+crt-static' \
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=scripts/test-avx512.sh \
#   cargo test --target x86_64-unknown-linux-gnu -p CRATE
# The boot takes ~15 s; then emulation runs ~50M instructions/s on one host core (AVX-512 ones
# slower): keep what the binary runs small, e.g. select tests by name in ARGS. --cpu
# corei7_skylake_x has AVX-512 without VNNI. Needs root for the apt installs (--setup-only).
set -euo pipefail
# Another Bochs build (e.g. 3.0, whose sapphire_rapids model has AVX512_BF16): BOCHS=its binary,
# BOCHS_BIOS=its BIOS image.
bochs="${BOCHS:-bochs-bin}" bios="${BOCHS_BIOS:-/usr/share/bochs/BIOS-bochs-latest}"

cache="${XDG_CACHE_HOME:-$HOME/.cache}/nano-qwen3-serving/avx512-vm"
cpu=tigerlake mem=1024 timeout=1200 keep="" setup_only="" envs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --setup-only) setup_only=1; shift ;;
    --cpu) cpu="$2"; shift 2 ;;
    --env) envs+=("$2"); shift 2 ;;
    --mem) mem="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --keep) keep="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    -*) echo "test-avx512: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done

skip() { echo "SKIPPED: test-avx512: $*"; exit 0; }

# --- setup: host tools from apt, kernel and busybox from Debian packages (cached) -------------
isolinux=/usr/lib/ISOLINUX/isolinux.bin ldlinux=/usr/lib/syslinux/modules/bios/ldlinux.c32
if ! command -v bochs-bin >/dev/null || ! command -v xorriso >/dev/null || ! command -v cpio >/dev/null ||
   [ ! -f "$isolinux" ] || [ ! -f "$ldlinux" ] || [ ! -f /usr/share/bochs/BIOS-bochs-latest ]; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || skip "needs root and apt-get to install bochs, isolinux, xorriso, cpio"
  { apt-get install -y -q --no-install-recommends bochs bochsbios vgabios isolinux syslinux-common xorriso cpio >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends \
        bochs bochsbios vgabios isolinux syslinux-common xorriso cpio >/dev/null; }; } ||
    skip "could not install bochs/isolinux/xorriso/cpio with apt-get"
fi
# The packages' files are unpacked here, not installed: no kernel install hooks, no /boot changes.
fetch() { # fetch PACKAGE: unpacks the candidate version of PACKAGE into $cache/PACKAGE
  [ -d "$cache/$1" ] && return
  mkdir -p "$cache/dl" && rm -f "$cache"/dl/*.deb
  (cd "$cache/dl" && apt-get download -q -o APT::Sandbox::User=root "$1" >/dev/null) || return 1
  dpkg-deb -x "$cache"/dl/*.deb "$cache/$1.tmp" && rm -rf "$cache/$1.tmp/lib/modules" && # unused
    mv "$cache/$1.tmp" "$cache/$1" && rm -f "$cache"/dl/*.deb
}
# The cloud flavour: fewer drivers and an LZ4 (not XZ) image, so less for the emulator to run.
kernel_pkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}'; }
kpkg=$(kernel_pkg); [ -n "$kpkg" ] || { apt-get update -q >/dev/null 2>&1; kpkg=$(kernel_pkg); }
{ [ -n "$kpkg" ] && fetch "$kpkg" && fetch busybox-static; } || skip "could not apt-get download the kernel or busybox-static"
vmlinuz=$(ls "$cache/$kpkg"/boot/vmlinuz-*) busybox="$cache/busybox-static/bin/busybox"
# Bochs 3.0 from Debian trixie, for the CPU model 2.7 lacks: sapphire_rapids (AVX512_BF16). It needs
# trixie's glibc and libstdc++, so it runs under trixie's own loader with those first on the library
# path; bookworm's (2.7's) GUI libraries serve the rest. Package files are looked up in trixie's index.
bochs3() {
  local dir="$cache/bochs3" mirror=http://deb.debian.org/debian p f
  if [ ! -x "$dir/bochs" ]; then
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp/root" || return 1
    curl -fsS "$mirror/dists/trixie/main/binary-amd64/Packages.xz" | xz -dc >"$dir.tmp/Packages" || return 1
    for p in bochs bochsbios libc6 libstdc++6 libgcc-s1; do
      f=$(awk -v p="$p" '$1 == "Package:" {cur = $2} cur == p && $1 == "Filename:" {print $2; exit}' "$dir.tmp/Packages")
      [ -n "$f" ] && curl -fsS -o "$dir.tmp/p.deb" "$mirror/$f" && dpkg-deb -x "$dir.tmp/p.deb" "$dir.tmp/root" || return 1
    done
    rm -f "$dir.tmp/Packages" "$dir.tmp/p.deb"
    local r="$dir/root" lib="$dir/root/usr/lib/x86_64-linux-gnu"
    printf '#!/bin/sh\nexport LTDL_LIBRARY_PATH=%s/bochs/plugins\nexec %s/ld-linux-x86-64.so.2 --library-path %s:/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu %s/usr/bin/bochs-bin "$@"\n' \
      "$lib" "$lib" "$lib" "$r" >"$dir.tmp/bochs"
    chmod +x "$dir.tmp/bochs" && rm -rf "$dir" && mv "$dir.tmp" "$dir" || return 1
  fi
  "$dir/bochs" --help cpu 2>&1 | grep -x sapphire_rapids >/dev/null
}
if [ -n "$setup_only" ] || { [ "$cpu" = sapphire_rapids ] && [ -z "${BOCHS:-}" ]; }; then
  bochs3 || skip "could not fetch and run Bochs 3.0 from Debian trixie (needed for sapphire_rapids)"
  [ "$cpu" = sapphire_rapids ] && [ -z "${BOCHS:-}" ] && bochs="$cache/bochs3/bochs" bios="$cache/bochs3/root/usr/share/bochs/BIOS-bochs-latest"
fi
[ -n "$setup_only" ] && { echo "test-avx512: ready ($(basename "$vmlinuz"), Bochs 2.7 and 3.0, cache $cache)"; exit 0; }

# --- the guest: initramfs + ISO ----------------------------------------------------------------
[ $# -ge 1 ] && [ -f "$1" ] || { echo "usage: $0 [--cpu M] [--env K=V]... [--mem MB] [--timeout S] BINARY [ARGS...]" >&2; exit 2; }
binary="$1"; shift
# A dynamically linked binary would not find its loader and libraries in the initramfs.
if command -v readelf >/dev/null && readelf -l "$binary" | grep -q 'program interpreter'; then
  echo "test-avx512: $binary is dynamically linked; build it with RUSTFLAGS='-C target-feature=+crt-static'" >&2
  exit 2
fi
work=$(mktemp -d); [ -n "$keep" ] && { mkdir -p "$keep"; rm -rf "$work"; work=$(cd "$keep" && pwd); }
bochs_pid=""
cleanup() { [ -n "$bochs_pid" ] && kill "$bochs_pid" 2>/dev/null; [ -n "$keep" ] || rm -rf "$work"; }
trap cleanup EXIT; trap 'exit 130' INT TERM

root="$work/root"
rm -rf "$root" "$work/iso"; mkdir -p "$root"/{bin,dev,proc,sys,tmp} "$work/iso/isolinux"
cp "$busybox" "$root/bin/busybox"
cp "$binary" "$root/test"
# The console (ttyS0) for init's output. Linux's built-in initramfs has this node too, so without
# root (mknod) it can be left out.
[ "$(id -u)" = 0 ] && mknod "$root/dev/console" c 5 1
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; } # single-quotes a word for sh
{ for e in "${envs[@]}"; do echo "export $(q "${e%%=*}")=$(q "${e#*=}")"; done
  printf 'set --'; for a in "$@"; do printf ' %s' "$(q "$a")"; done; echo; } >"$root/args"
# init: the mounts programs expect (/proc & co.), the binary, its exit status as a marker line, and
# power off (Bochs quits on ACPI soft-off) once `stty` (tcsetattr TCSADRAIN) has drained the serial
# port: a plain poweroff loses what is still queued for the (emulated, 115200 baud) UART.
cat >"$root/init" <<'EOF'
#!/bin/busybox sh
bb=/bin/busybox
$bb mount -t proc proc /proc; $bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev; $bb mount -t tmpfs tmp /tmp
. /args
cd /tmp
echo "@@avx512-vm start"
/test "$@"
echo "@@avx512-vm exit=$?"
$bb stty -F /dev/console 115200
$bb poweroff -f
EOF
chmod +x "$root/init" "$root/test"
(cd "$root" && find . | cpio -o -H newc --quiet) >"$work/iso/initrd"
cp "$vmlinuz" "$work/iso/vmlinuz"
cp "$isolinux" "$ldlinux" "$work/iso/isolinux/"
# Kernel options. `clearcpuid` works around Bochs 2.7 bugs: its CPUID leaf 0xD is wrong for PKRU and
# for the compacted (XSAVEC/XSAVES) format, which makes Linux turn XSAVE, and so AVX/AVX-512, off;
# with FSRM Linux copies with short `rep movsb`s, which Bochs gets wrong (the kernel corrupts itself).
# This only hides them from the kernel: the binary still sees the model's CPUID (AVX-512, VNNI).
# `no5lvl`: Bochs 3.0's sapphire_rapids has 5-level paging, and its SMM return drops CR4.LA57.
# The rest shortens the boot (emulated at ~50M instructions/s): few messages (the kernel's serial
# console is slow), no crypto self-tests or certificate loading (a third of the boot), one CPU.
cmdline="console=ttyS0 clearcpuid=pku,xsaves,xsavec,fsrm quiet loglevel=3 cryptomgr.notests
  initcall_blacklist=load_system_certificate_list mitigations=off nokaslr nosmp no5lvl"
printf 'default linux\nprompt 0\ntimeout 0\nlabel linux\n  kernel /vmlinuz\n  append initrd=/initrd %s\n' \
  "$(echo $cmdline)" >"$work/iso/isolinux/isolinux.cfg"
xorriso -as mkisofs -quiet -o "$work/boot.iso" -b isolinux/isolinux.bin -c isolinux/boot.cat \
  -no-emul-boot -boot-load-size 4 -boot-info-table "$work/iso" 2>/dev/null

# --- Bochs: headless, serial port to a file, no prompts ------------------------------------------
# No sound: on a host without a sound card Bochs 2.7's ALSA driver aborts at start-up
# ("buffer overflow detected"); the dummy driver needs nothing from the host.
cat >"$work/bochsrc" <<EOF
display_library: rfb, options="timeout=0"
speaker: enabled=0
sound: driver=dummy
megs: $mem
romimage: file=$bios
vgaromimage: file=/usr/share/vgabios/vgabios.bin
cpu: model=$cpu, count=1, ips=100000000, reset_on_triple_fault=0
clock: sync=none, time0=local
ata0-master: type=cdrom, path=$work/boot.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$work/serial.log
log: $work/bochs.log
panic: action=fatal
error: action=report
info: action=report
debug: action=ignore
EOF
: >"$work/serial.log"
printf 'continue\nquit\n' >"$work/debugger.rc" # Debian's Bochs has its debugger built in: just run
ms() { echo $(($(date +%s%3N) - start)); }; secs() { echo "$(($1 / 1000)).$(($1 % 1000 / 100))s"; }
start=$(date +%s%3N) booted="" finished=""
# The rfb display (Debian's Bochs has no "nogui") listens for VNC on port 5900+: where possible
# Bochs gets its own network namespace, so that nothing outside can connect.
netns=(); unshare -n true 2>/dev/null && netns=(unshare -n)
"${netns[@]}" $bochs -q -f "$work/bochsrc" -rc "$work/debugger.rc" </dev/null >"$work/bochs.out" 2>&1 &
bochs_pid=$!
# Bochs quits by itself at the power-off; after the exit marker or a kernel panic (init failed) it
# gets 5 s for that, and the whole run gets $timeout.
while kill -0 "$bochs_pid" 2>/dev/null; do
  now=$(ms)
  [ -z "$booted" ] && grep -q '^@@avx512-vm start' "$work/serial.log" && booted=$now
  [ -z "$finished" ] && grep -q -e '^@@avx512-vm exit=' -e 'Kernel panic' "$work/serial.log" && finished=$now
  [ -n "$finished" ] && [ "$now" -ge $((finished + 5000)) ] && break
  [ "$now" -ge $((timeout * 1000)) ] && { echo "test-avx512: timed out after ${timeout}s" >&2; break; }
  sleep 0.2
done
kill "$bochs_pid" 2>/dev/null || true; wait "$bochs_pid" 2>/dev/null || true; bochs_pid=""
[ -z "$booted" ] && grep -q '^@@avx512-vm start' "$work/serial.log" && booted=$(ms) # ran < 0.2 s
status=$(tr -d '\r' <"$work/serial.log" | sed -n 's/^@@avx512-vm exit=\([0-9]*\)$/\1/p')
echo "test-avx512: $(basename "$binary") on $cpu: ${booted:+init ran after $(secs "$booted"), }all done" \
  "after $(secs "$(ms)"), exit status ${status:-none}" >&2
if [ -z "$status" ]; then # never finished: show what the guest and Bochs said
  tr -d '\r' <"$work/serial.log" >&2; tail -n 20 "$work/bochs.out" >&2; exit 1
fi
tr -d '\r' <"$work/serial.log" | sed -n '/^@@avx512-vm start$/,/^@@avx512-vm exit=/p' | sed '1d;$d'
exit "$status"
