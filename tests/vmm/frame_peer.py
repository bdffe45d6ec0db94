#!/usr/bin/env python3
"""Host end of the real-VMM VLAN and DPDK checks (runs inside the test's netns).

Frames are read and written with an AF_PACKET socket on the TAP: what the
guest's device transmitted (the worker writes it into the TAP) is what the
capture sees; what it injects is what the device receives. The kernel moves
an 802.1Q tag of a received frame into the packet's auxiliary data
(PACKET_AUXDATA), so tags are read from there (and from the frame itself if
it kept them).

usage:
  frame_peer.py serve TAP ADDR PORT LOG VLAN VLAN_IP OTHER_VID OTHER_IP VTAP
      The VLAN scenarios' host side. The host kernel may have no 802.1Q
      support (CONFIG_VLAN_8021Q), so the host's VLAN interface is a second,
      persistent TAP (VTAP, addressed by the caller) bridged here in user
      space, as a VLAN sub-interface of TAP would be: frames from the guest
      tagged VLAN go to VTAP untagged, what the kernel sends out of VTAP goes
      to the guest tagged VLAN. Frames with other tags or none are not bridged.
      The probe service: one request per TCP connection on ADDR:PORT, one
      answer line.
        cap-start MAC       count frames from MAC from now on
        cap-stop            answer "untagged=N vlanVID=N tagged_other=N echo_untagged=N
                            echo_vlanVID=N echo_tagged_other=N ...": frames from MAC by
                            tag, and the ICMP echo requests among them
        inject KIND N MAC   send N UDP frames to MAC and answer "sent N":
                            untagged  untagged, to VLAN_IP (the sub-interface's address)
                            tagged    tagged VLAN, to VLAN_IP
                            othervid  tagged OTHER_VID, to OTHER_IP
  frame_peer.py dpdk TAP DSTMAC LOG VLAN OTHER_VID FLOWS
      The DPDK scenario: sends FLOWS untagged UDP flows (RSS), 8 frames tagged
      VLAN, 8 tagged OTHER_VID (127 bytes each, the only frames of that length),
      8 VXLAN frames (inner IPv4/TCP), all to DSTMAC;
      captures what comes back from DSTMAC (testpmd's csum forwarding with
      hardware checksums) for a while and checks the checksums of the VXLAN
      frames that return: outer IPv4, outer UDP (if not 0), inner IPv4, inner
      TCP, and of the plain UDP frames that return: IPv4, UDP. Prints a summary
      line "sent_rss=.. vxlan_back=.. vxlan_csum_ok=.. udp_back=.. udp_csum_ok=..".
"""
import socket
import struct
import sys
import threading
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 1 << 4
PACKET_OUTGOING = 4


def mac_bytes(m):
    return bytes(int(x, 16) for x in m.split(":"))


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4(src, dst, proto, payload, ident=1):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload


def l4_csum(src, dst, proto, seg):
    ph = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, len(seg))
    return csum(ph + seg)


def udp(src, dst, sport, dport, payload, with_csum=True):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if with_csum:
        c = l4_csum(src, dst, 17, seg) or 0xFFFF
        seg = seg[:6] + struct.pack("!H", c) + seg[8:]
    return seg


def tcp(src, dst, sport, dport, payload):
    seg = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 8192, 0, 0) + payload
    c = l4_csum(src, dst, 6, seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def ether(dst, src, ethertype, payload, vid=None):
    if vid is None:
        return dst + src + struct.pack("!H", ethertype) + payload
    return dst + src + struct.pack("!HHH", 0x8100, vid, ethertype) + payload


def open_tap(tap):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.bind((tap, 0))
    return s


def recv_frame(s):
    """(frame, vid or None, pkttype): the tag from the aux data or the frame."""
    data, anc, _, addr = s.recvmsg(65535, socket.CMSG_SPACE(32))
    vid = None
    for level, typ, cdata in anc:
        if level == SOL_PACKET and typ == PACKET_AUXDATA and len(cdata) >= 20:
            status, _, _, _, _, tci, _ = struct.unpack("IIIHHHH", cdata[:20])
            if status & TP_STATUS_VLAN_VALID:
                vid = tci & 0xFFF
    if vid is None and len(data) >= 18 and data[12:14] == b"\x81\x00":
        vid = struct.unpack("!H", data[14:16])[0] & 0xFFF
        data = data[:12] + data[16:]
    return data, vid, addr[2]


# ------------------------------------------------------------------ serve (VLAN)
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


def serve(tap, addr, port, log_path, vlan, vlan_ip, other_vid, other_ip, vtap):
    import fcntl
    import os
    vlan, other_vid = int(vlan), int(other_vid)
    log = open(log_path, "a", buffering=1)
    lock = threading.Lock()
    state = {"mac": None, "counts": {}, "echo": {}, "bridged_in": 0, "bridged_out": 0}
    rx = open_tap(tap)
    tx = open_tap(tap)
    my_mac = open(f"/sys/class/net/{tap}/address").read().strip()
    my_ip = addr
    vfd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(vfd, TUNSETIFF, struct.pack("16sH", vtap.encode(), IFF_TAP | IFF_NO_PI))

    def capture():
        while True:
            data, vid, pkttype = recv_frame(rx)
            if pkttype == PACKET_OUTGOING or len(data) < 14:
                continue
            if vid == vlan:  # into the host's VLAN interface, untagged
                try:
                    os.write(vfd, data)
                    state["bridged_in"] += 1
                except OSError:
                    pass
            with lock:
                if state["mac"] is not None and data[6:12] == state["mac"]:
                    k = "untagged" if vid is None else f"vlan{vid}"
                    state["counts"][k] = state["counts"].get(k, 0) + 1
                    # ICMP echo requests (the guest's pings) on their own
                    if data[12:14] == b"\x08\x00" and data[23] == 1 and data[14 + (data[14] & 15) * 4] == 8:
                        state["echo"][k] = state["echo"].get(k, 0) + 1

    def from_vtap():  # the host's VLAN interface transmits: to the guest, tagged
        while True:
            f = os.read(vfd, 65536)
            if len(f) >= 14:
                tx.send(f[:12] + struct.pack("!HH", 0x8100, vlan) + f[12:])
                state["bridged_out"] += 1

    threading.Thread(target=capture, daemon=True).start()
    threading.Thread(target=from_vtap, daemon=True).start()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, int(port)))
    srv.listen(8)
    log.write(f"ready tap={tap} mac={my_mac}\n")
    while True:
        c, _ = srv.accept()
        try:
            c.settimeout(20)
            req = c.makefile("r").readline().split()
            ans = "error bad request"
            if req[:1] == ["cap-start"] and len(req) == 2:
                with lock:
                    state["mac"], state["counts"], state["echo"] = mac_bytes(req[1]), {}, {}
                ans = "ok"
            elif req[:1] == ["cap-stop"]:
                with lock:
                    counts, echo, state["mac"] = dict(state["counts"]), dict(state["echo"]), None
                tagged_vlan = counts.pop(f"vlan{vlan}", 0)
                untagged = counts.pop("untagged", 0)
                ans = f"untagged={untagged} vlan{vlan}={tagged_vlan} tagged_other={sum(counts.values())}"
                ans += (f" echo_untagged={echo.pop('untagged', 0)} echo_vlan{vlan}={echo.pop(f'vlan{vlan}', 0)}"
                        f" echo_tagged_other={sum(echo.values())}")
                if counts:
                    ans += " other_ids=" + ",".join(sorted(counts))
                ans += f" bridged_in={state['bridged_in']} bridged_out={state['bridged_out']}"
            elif req[:1] == ["inject"] and len(req) == 4 and req[1] in ("untagged", "tagged", "othervid"):
                kind, n, dst = req[1], int(req[2]), mac_bytes(req[3])
                vid = {"untagged": None, "tagged": vlan, "othervid": other_vid}[kind]
                ip = other_ip if kind == "othervid" else vlan_ip
                sent = 0
                for i in range(n):
                    pl = f"emud-vlan-probe {kind} {i}".encode()
                    f = ether(dst, mac_bytes(my_mac), 0x0800,
                              ipv4(my_ip, ip, 17, udp(my_ip, ip, 40000 + i, 9, pl), ident=i + 1), vid)
                    tx.send(f)
                    sent += 1
                    time.sleep(0.002)
                ans = f"sent {sent}"
            log.write(f"{' '.join(req)} -> {ans}\n")
            c.sendall((ans + "\n").encode())
        except (OSError, ValueError, IndexError) as e:
            log.write(f"request failed: {e!r}\n")
        finally:
            c.close()


# ------------------------------------------------------------------ dpdk
def dpdk(tap, dst_mac, log_path, vlan, other_vid, flows):
    vlan, other_vid, flows = int(vlan), int(other_vid), int(flows)
    log = open(log_path, "a", buffering=1)
    dst = mac_bytes(dst_mac)
    src = mac_bytes(open(f"/sys/class/net/{tap}/address").read().strip())
    rx, tx = open_tap(tap), open_tap(tap)
    rx.settimeout(0.5)
    got = []
    stop = threading.Event()

    def capture():
        while not stop.is_set():
            try:
                data, vid, pkttype = recv_frame(rx)
            except socket.timeout:
                continue
            if pkttype != PACKET_OUTGOING and data[6:12] == dst:
                got.append((data, vid))

    th = threading.Thread(target=capture, daemon=True)
    th.start()
    h, g = "10.77.0.1", "10.77.0.2"
    sent = {"rss": 0, "vlan": 0, "othervid": 0, "vxlan": 0}
    for i in range(flows):  # distinct 5-tuples: RSS spreads them over the queues
        tx.send(ether(dst, src, 0x0800, ipv4(h, g, 17, udp(h, g, 10000 + i, 20000 + i, b"rss%04d" % i), i + 1)))
        sent["rss"] += 1
        time.sleep(0.01)
    for i in range(8):
        tx.send(ether(dst, src, 0x0800, ipv4(h, g, 17, udp(h, g, 30000 + i, 30000, b"vlan%04d" % i), i + 1), vlan))
        sent["vlan"] += 1
        time.sleep(0.01)
    for i in range(8):
        # (a length no other frame here has: OTHERVID_LEN, or 4 less if stripped)
        tx.send(ether(dst, src, 0x0800, ipv4(h, g, 17, udp(h, g, 31000 + i, 31000, (b"othervid%04d" % i).ljust(81, b".")),
                                             i + 1), other_vid))
        sent["othervid"] += 1
        time.sleep(0.01)
    ih, ig = "192.168.50.1", "192.168.50.2"
    for i in range(8):
        inner = ether(b"\x02\x00\x00\x00\x50\x02", b"\x02\x00\x00\x00\x50\x01", 0x0800,
                      ipv4(ih, ig, 6, tcp(ih, ig, 32000 + i, 80, b"vxlan-inner-%04d" % i), i + 1))
        vx = struct.pack("!II", 0x08000000, 42 << 8) + inner
        tx.send(ether(dst, src, 0x0800, ipv4(h, g, 17, udp(h, g, 33000 + i, 4789, vx), i + 100)))
        sent["vxlan"] += 1
        time.sleep(0.01)
    time.sleep(float(sys.argv[8]) if len(sys.argv) > 8 else 15)
    stop.set()
    th.join()
    # the VXLAN frames that came back (testpmd's csum engine; L4 ports unchanged)
    back, ok, bad = 0, 0, []
    other_back, udp_back, udp_ok = 0, 0, 0
    for data, vid in list(got):
        if len(data) < 14 + 20 + 8 or data[12:14] != b"\x08\x00":
            other_back += 1
            continue
        ip = data[14:]
        ihl = (ip[0] & 15) * 4
        if ip[9] != 17:
            other_back += 1
            continue
        if struct.unpack("!H", ip[ihl + 2:ihl + 4])[0] != 4789:
            # plain UDP (the RSS flows, the VLAN frames): IPv4 and UDP checksums by the device
            udp_back += 1
            tot = struct.unpack("!H", ip[2:4])[0]
            seg = ip[ihl:tot]
            if csum(ip[:ihl]) == 0 and l4_csum(socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20]), 17, seg) == 0:
                udp_ok += 1
            else:
                log.write(f"udp back with bad checksums: {data.hex()}\n")
            continue
        back += 1
        tot = struct.unpack("!H", ip[2:4])[0]
        ip = ip[:tot]
        u = ip[ihl:]
        problems = []
        if csum(ip[:ihl]) != 0:
            problems.append("outer_ip")
        if struct.unpack("!H", u[6:8])[0] != 0 and l4_csum(socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20]), 17, u) != 0:
            problems.append("outer_udp")
        inner = u[8 + 8:]
        iip = inner[14:]
        iihl = (iip[0] & 15) * 4
        itot = struct.unpack("!H", iip[2:4])[0]
        iip = iip[:itot]
        if csum(iip[:iihl]) != 0:
            problems.append("inner_ip")
        if l4_csum(socket.inet_ntoa(iip[12:16]), socket.inet_ntoa(iip[16:20]), 6, iip[iihl:]) != 0:
            problems.append("inner_tcp")
        if problems:
            bad.append("+".join(problems))
            log.write(f"vxlan back with bad checksums ({'+'.join(problems)}): {data.hex()}\n")
        else:
            ok += 1
            log.write(f"vxlan back ok: outer udp csum {struct.unpack('!H', u[6:8])[0]:#06x}\n")
    summary = (f"sent_rss={sent['rss']} sent_vlan={sent['vlan']} sent_othervid={sent['othervid']} "
               f"sent_vxlan={sent['vxlan']} frames_back={len(got)} vxlan_back={back} vxlan_csum_ok={ok} "
               f"vxlan_csum_bad={len(bad)} udp_back={udp_back} udp_csum_ok={udp_ok} other_back={other_back}")
    if bad:
        summary += " bad=" + ",".join(sorted(set(bad)))
    log.write(summary + "\n")
    print(summary)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(*sys.argv[2:11])
    elif sys.argv[1] == "dpdk":
        dpdk(*sys.argv[2:8])
    else:
        sys.exit(__doc__)
