// The frame both data-path benchmarks send: an IPv4/UDP frame of `len`
// bytes as testpmd's txonly builds them (valid IPv4 header checksum and
// lengths, UDP checksum 0 = none), so the device's RX checksum check
// verifies the IP header and reports L3L4P, as it would for real traffic.
#ifndef EMUD_TESTS_BENCH_BENCH_FRAME_H_
#define EMUD_TESTS_BENCH_BENCH_FRAME_H_

#include <cstdint>
#include <cstring>

namespace emud::bench {

inline void FillUdpFrame(uint8_t* f, uint32_t len, const uint8_t* dst_mac) {
  std::memset(f, 0, len);
  std::memcpy(f, dst_mac, 6);
  f[6] = 0x02;
  f[11] = 0x02;
  f[12] = 0x08;  // IPv4
  uint8_t* ip = f + 14;
  const uint32_t ip_len = len - 14, udp_len = ip_len - 20;
  ip[0] = 0x45;
  ip[2] = uint8_t(ip_len >> 8);
  ip[3] = uint8_t(ip_len);
  ip[8] = 64;  // TTL
  ip[9] = 17;  // UDP
  const uint8_t addrs[8] = {198, 18, 0, 1, 198, 18, 0, 2};
  std::memcpy(ip + 12, addrs, 8);
  uint32_t sum = 0;
  for (int i = 0; i < 20; i += 2) sum += uint32_t(ip[i] << 8 | ip[i + 1]);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  ip[10] = uint8_t(~sum >> 8);
  ip[11] = uint8_t(~sum);
  uint8_t* udp = ip + 20;
  udp[0] = 0x04; udp[1] = 0xd2;  // 1234
  udp[2] = 0x16; udp[3] = 0x2e;  // 5678
  udp[4] = uint8_t(udp_len >> 8);
  udp[5] = uint8_t(udp_len);
}

}  // namespace emud::bench

#endif  // EMUD_TESTS_BENCH_BENCH_FRAME_H_
