#!/usr/bin/env bash
# Regenerates fuzz/seeds/ from real captures and real tools: DHCP requests captured from
# dhclient, dhcpcd, udhcpc, SeaBIOS/iPXE and OVMF; ipmitool's RMCP+ sessions with ipmi_sim and
# the test kit's BMC; `qemu-img info` of real qcow2 images; partition tables written by sfdisk;
# Redfish bodies as sushy-tools serves them; TFTP packets as tftp-hpa, atftp and iPXE send them.
set -euo pipefail
cd "$(dirname "$0")"
out=seeds
# Inputs that once crashed a target (regress-*) are kept: they stay in every run's corpus.
[ -d "$out" ] && find "$out" -type f ! -name 'regress-*' -delete
mkdir -p "$out"/{dhcp,tftp_packet,tftp_transfer,ipmi,redfish,http_head,path_resolve,ui_form,partitions,qcow2_info}
hex() { xxd -r -p; }

# DHCP: the captured requests (hex, # comments).
for f in ../crates/plinth-dhcp/tests/captures/*.hex; do
  grep -v '^#' "$f" | tr -d ' \n' | hex >"$out/dhcp/$(basename "$f" .hex)"
done

# IPMI: every datagram of the ipmitool sessions (lines "C hex" / "S hex").
for f in ../crates/plinth-bmc/src/ipmi/testdata-*.txt; do
  n=0
  grep -E '^[CS] ' "$f" | while read -r side h; do
    n=$((n + 1))
    printf '%s' "$h" | hex >"$out/ipmi/$(basename "$f" .txt)-$n-$side"
  done
done

# TFTP: requests as iPXE (UEFI), tftp-hpa and atftp send them, and the packets of a transfer.
printf '\x00\x01snponly.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x004\x00' >"$out/tftp_packet/ipxe-rrq"
printf '\x00\x01undionly.kpxe\x00octet\x00' >"$out/tftp_packet/tftp-hpa-rrq"
printf '\x00\x01plinth/vmlinuz\x00octet\x00timeout\x001\x00tsize\x000\x00blksize\x001428\x00' >"$out/tftp_packet/atftp-rrq"
printf '\x00\x02x\x00octet\x00' >"$out/tftp_packet/wrq"
printf '\x00\x03\x00\x01hello' >"$out/tftp_packet/data"
printf '\x00\x04\x00\x01' >"$out/tftp_packet/ack"
printf '\x00\x05\x00\x08tsize probe\x00' >"$out/tftp_packet/error"
printf '\x00\x06blksize\x001468\x00tsize\x00100000\x00' >"$out/tftp_packet/oack"
printf '\x10\x27\x81\x03\x00\x00\x03\x01\x00\x03\x02\x00\x03\x00\x00\x00' >"$out/tftp_transfer/acks"
printf '\x10\x00\x01\x04\x00\x00\x00\x00\x00\x00\x00\x00' >"$out/tftp_transfer/timeouts"

# The first datagram a real client sends to a UDP port on loopback, saved to $1.
capture_udp() { # FILE PORT COMMAND...
  local file=$1 port=$2
  shift 2
  python3 - "$file" "$port" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[2])))
s.settimeout(20)
data, _ = s.recvfrom(65535)
open(sys.argv[1], "wb").write(data)
PY
  local py=$!
  sleep 0.5
  timeout 5 "$@" >/dev/null 2>&1 || true
  wait "$py"
}
# perfdhcp's DISCOVER (as a relay from 127.0.0.1), atftp's and tftp-hpa's read requests.
capture_udp "$out/dhcp/perfdhcp_discover" 67 \
  env KEA_LOCKFILE_DIR=/tmp KEA_PIDFILE_DIR=/tmp perfdhcp -4 -L 10068 -l 127.0.0.1 -r 1 -n 1 -R 1 127.0.0.1
capture_udp "$out/tftp_packet/atftp-captured" 10069 atftp --option "blksize 1428" --option "tsize 0" -g -r plinth/vmlinuz -l /dev/null 127.0.0.1 10069
capture_udp "$out/tftp_packet/tftp-hpa-captured" 10070 tftp -m octet 127.0.0.1 10070 -c get undionly.kpxe /dev/null

# Redfish: sushy-tools' own resources, fetched from a running sushy-emulator (fake driver),
# when the test command's venv has it; and an error body.
sushy=${PLINTH_SUSHY_EMULATOR:-/var/cache/plinth-venv/bin/sushy-emulator}
if [ -x "$sushy" ]; then
  sd=$(mktemp -d)
  cat >"$sd/conf.py" <<PY
SUSHY_EMULATOR_FAKE_DRIVER = True
SUSHY_EMULATOR_FAKE_SYSTEMS = [{'uuid': '27946b59-9e44-4fa7-8e91-f3527a1ef094', 'name': 'vm1', 'power_state': 'Off', 'nics': [{'mac': '52:54:00:12:34:56', 'ip': '10.0.0.5'}]}]
SUSHY_EMULATOR_STATE_DIR = '$sd/state'
SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'
SUSHY_EMULATOR_LISTEN_PORT = 10071
PY
  "$sushy" --config "$sd/conf.py" >/dev/null 2>&1 &
  sp=$!
  for _ in $(seq 50); do curl -sf http://127.0.0.1:10071/redfish/v1/ >/dev/null && break; sleep 0.2; done
  sys=/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094
  for r in /redfish/v1/ /redfish/v1/Systems "$sys" "$sys/EthernetInterfaces" /redfish/v1/SessionService /redfish/v1/Managers; do
    curl -sf "http://127.0.0.1:10071$r" >"$out/redfish/sushy$(printf '%s' "$r" | tr '/' '_').json" || true
  done
  curl -s -X PATCH -H 'content-type: application/json' -d '{"Boot": {"BootSourceOverrideTarget": "Nowhere"}}' \
    "http://127.0.0.1:10071$sys" >"$out/redfish/sushy_error.json" || true
  kill "$sp" 2>/dev/null || true
  wait "$sp" 2>/dev/null || true
  rm -rf "$sd"
fi
# Shapes plinth reads from other BMCs too.
cat >"$out/redfish/root.json" <<'J'
{"@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot", "Id": "RedfishService", "Name": "Root Service", "RedfishVersion": "1.5.0", "UUID": "92384634-2938-2342-8820-489239905423", "Systems": {"@odata.id": "/redfish/v1/Systems"}, "Managers": {"@odata.id": "/redfish/v1/Managers"}, "SessionService": {"@odata.id": "/redfish/v1/SessionService"}, "@odata.id": "/redfish/v1/"}
J
cat >"$out/redfish/systems.json" <<'J'
{"@odata.type": "#ComputerSystemCollection.ComputerSystemCollection", "Name": "Computer System Collection", "Members@odata.count": 1, "Members": [{"@odata.id": "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094"}], "@odata.id": "/redfish/v1/Systems"}
J
cat >"$out/redfish/system.json" <<'J'
{"@odata.type": "#ComputerSystem.v1_1_0.ComputerSystem", "Id": "27946b59-9e44-4fa7-8e91-f3527a1ef094", "Name": "fake", "UUID": "27946b59-9e44-4fa7-8e91-f3527a1ef094", "Manufacturer": "Sushy Emulator", "Model": "fake", "SerialNumber": "ABC123", "PowerState": "On", "Boot": {"BootSourceOverrideEnabled": "Continuous", "BootSourceOverrideTarget": "Pxe", "BootSourceOverrideTarget@Redfish.AllowableValues": ["Pxe", "Cd", "Hdd"], "BootSourceOverrideMode": "UEFI"}, "EthernetInterfaces": {"@odata.id": "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094/EthernetInterfaces"}, "Actions": {"#ComputerSystem.Reset": {"target": "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094/Actions/ComputerSystem.Reset", "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "Nmi", "ForceOn"]}}, "@odata.etag": "W/\"1a\"", "@odata.id": "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094"}
J
cat >"$out/redfish/nic.json" <<'J'
{"@odata.type": "#EthernetInterface.v1_4_0.EthernetInterface", "Id": "eth0", "MACAddress": "52:54:00:12:34:56", "PermanentMACAddress": "52:54:00:12:34:56", "@odata.id": "/redfish/v1/Systems/1/EthernetInterfaces/eth0"}
J
cat >"$out/redfish/error.json" <<'J'
{"error": {"code": "Base.1.0.GeneralError", "message": "A general error has occurred.", "@Message.ExtendedInfo": [{"Message": "The property BootSourceOverrideTarget has an invalid value."}]}}
J
printf 'https://10.1.0.21:8443/redfish/v1/SessionService/Sessions/1' >"$out/redfish/location"

# The sendfile path's head: 8 bytes of file length, then a Range header; and request lines.
printf 'GET /boot/plinth/vmlinuz HTTP/1.1' >"$out/http_head/line"
printf 'HEAD /boot/ipxe.efi%%3Fx=1 HTTP/1.1' >"$out/http_head/line-escaped"
printf '\x00\x00\x10\x00\x00\x00\x00\x00bytes=0-1023' >"$out/http_head/range"
printf '\x00\x00\x10\x00\x00\x00\x00\x00bytes=-512' >"$out/http_head/suffix"

# Names a boot client asks for.
for n in plinth/vmlinuz ipxe.efi ../secret out plinth/in plinth/../ipxe.efi %2e%2e/x plinth//vmlinuz /ipxe.efi; do
  printf '%s' "$n" >"$out/path_resolve/$(printf '%s' "$n" | tr '/%.' '_pd')"
done

# A login form and cookies (0xff separates them).
printf '_csrf=abc123&username=tech&password=p%%40ss+word&next=%%2Fracks\xffplinth_session=s3cret; plinth_flash=ok%%3Adone' >"$out/ui_form/login"

# Partition tables: sfdisk writes an MBR and a GPT on a small disk; their first 34 sectors.
for label in dos gpt; do
  img=$(mktemp)
  truncate -s 8M "$img"
  printf 'label: %s\n,2M\n,2M\n' "$label" | sfdisk -q "$img" >/dev/null
  head -c $((34 * 512)) "$img" >"$out/partitions/$label"
  rm -f "$img"
done

# qemu-img info of a plain, a backed and an encrypted qcow2 image.
d=$(mktemp -d)
qemu-img create -q -f qcow2 "$d/base.qcow2" 8M
qemu-img create -q -f qcow2 -b "$d/base.qcow2" -F qcow2 "$d/top.qcow2"
# (qemu-img 7.2 times LUKS key derivation with getrusage and can see no CPU time: tried again)
for _ in 1 2 3 4 5; do
  qemu-img create -q -f qcow2 --object secret,id=s,data=x -o encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10 "$d/enc.qcow2" 8M 2>/dev/null && break
done
for i in base top enc; do
  [ -f "$d/$i.qcow2" ] && qemu-img info --output=json -f qcow2 "$d/$i.qcow2" | sed "s|$d/||g" >"$out/qcow2_info/$i.json"
done
rm -rf "$d"
find "$out" -type f -empty -delete
echo "seeds: $(find "$out" -type f | wc -l) files"
