#include "vfio_user/pci_config_space.h"

#include <cstring>

#include "gtest/gtest.h"
#include "vfio_user/msix_table.h"

namespace emud::vfio_user {
namespace {

uint32_t Rd32(const PciConfigSpace& c, uint32_t off) {
  uint8_t b[4];
  EXPECT_TRUE(c.Read(off, absl::MakeSpan(b)).ok());
  uint32_t v;
  std::memcpy(&v, b, 4);
  return v;
}
void Wr(PciConfigSpace& c, uint32_t off, uint32_t v, int n) {
  uint8_t b[4];
  std::memcpy(b, &v, 4);
  ASSERT_TRUE(c.Write(off, absl::MakeConstSpan(b, n)).ok());
}

TEST(PciConfigSpaceTest, HeaderIsReadOnly) {
  PciConfigSpace c;
  c.SetHeader({.vendor_id = 0x8086, .device_id = 0x1889, .subsystem_vendor_id = 0x8086,
               .subsystem_id = 0x0001, .revision = 2, .class_code = 0x020000});
  EXPECT_EQ(Rd32(c, 0), 0x18898086u);
  EXPECT_EQ(Rd32(c, 8), 0x02000002u);
  Wr(c, 0, 0xffffffff, 4);
  EXPECT_EQ(Rd32(c, 0), 0x18898086u);
  Wr(c, pci::kCommand, 0xffff, 2);
  EXPECT_EQ(c.command(), 0x0547);
  EXPECT_TRUE(c.bus_master_enabled());
}

TEST(PciConfigSpaceTest, Bar32SizingAndAddress) {
  PciConfigSpace c;
  ASSERT_TRUE(c.SetBar(0, 0x20000, PciConfigSpace::BarType::kMem32).ok());
  Wr(c, pci::kBar0, 0xffffffff, 4);
  EXPECT_EQ(Rd32(c, pci::kBar0), 0xfffe0000u);
  Wr(c, pci::kBar0, 0xfebc1234, 4);
  EXPECT_EQ(Rd32(c, pci::kBar0), 0xfebc0000u);
  EXPECT_EQ(c.BarAddress(0), 0xfebc0000u);
  // Unused BAR stays 0.
  Wr(c, pci::kBar0 + 4, 0xffffffff, 4);
  EXPECT_EQ(Rd32(c, pci::kBar0 + 4), 0u);
}

TEST(PciConfigSpaceTest, Bar64SizingAndPrefetch) {
  PciConfigSpace c;
  ASSERT_TRUE(c.SetBar(2, 0x4000, PciConfigSpace::BarType::kMem64, true).ok());
  EXPECT_EQ(Rd32(c, pci::kBar0 + 8), 0xcu);
  Wr(c, pci::kBar0 + 8, 0xffffffff, 4);
  Wr(c, pci::kBar0 + 12, 0xffffffff, 4);
  EXPECT_EQ(Rd32(c, pci::kBar0 + 8), 0xffffc00cu);
  EXPECT_EQ(Rd32(c, pci::kBar0 + 12), 0xffffffffu);
  Wr(c, pci::kBar0 + 8, 0x80000000, 4);
  Wr(c, pci::kBar0 + 12, 0x1, 4);
  EXPECT_EQ(c.BarAddress(2), 0x180000000ull);
  EXPECT_FALSE(c.SetBar(3, 0x1000, PciConfigSpace::BarType::kMem32).ok());  // taken by BAR2 high
}

TEST(PciConfigSpaceTest, BadBarsRefused) {
  PciConfigSpace c;
  EXPECT_FALSE(c.SetBar(6, 0x1000, PciConfigSpace::BarType::kMem32).ok());
  EXPECT_FALSE(c.SetBar(0, 0x1001, PciConfigSpace::BarType::kMem32).ok());
  EXPECT_FALSE(c.SetBar(0, 8, PciConfigSpace::BarType::kMem32).ok());
  EXPECT_FALSE(c.SetBar(5, 0x1000, PciConfigSpace::BarType::kMem64).ok());
  EXPECT_FALSE(c.SetBar(0, 512, PciConfigSpace::BarType::kIo).ok());
  EXPECT_TRUE(c.SetBar(0, 32, PciConfigSpace::BarType::kIo).ok());
  Wr(c, pci::kBar0, 0xffffffff, 4);
  EXPECT_EQ(Rd32(c, pci::kBar0), 0xffffffe1u);
}

TEST(PciConfigSpaceTest, CapabilityChainAndFlr) {
  PciConfigSpace c(4096);
  MsixTable t(4);
  ASSERT_TRUE(c.SetBar(0, 0x10000, PciConfigSpace::BarType::kMem32).ok());
  auto pm = c.AddPmCapability();
  auto msix = c.AddMsixCapability(&t, 0, 0x8000, 0, 0x9000);
  auto pcie = c.AddPcieCapability({});
  ASSERT_TRUE(pm.ok() && msix.ok() && pcie.ok());
  EXPECT_TRUE(c.Read16(pci::kStatus) & pci::kStatusCapList);
  EXPECT_EQ(c.Read8(pci::kCapPtr), *pm);
  EXPECT_EQ(c.Read8(*pm + 1), *msix);
  EXPECT_EQ(c.Read8(*msix + 1), *pcie);
  EXPECT_EQ(c.Read8(*pcie + 1), 0);
  EXPECT_EQ(c.FindCapability(pci::kCapIdPcie), *pcie);
  EXPECT_EQ(c.Read16(*msix + pci::kMsixControl), 3);
  EXPECT_EQ(c.Read32(*msix + pci::kMsixTable), 0x8000u);
  EXPECT_EQ(c.Read32(*msix + pci::kMsixPba), 0x9000u);
  EXPECT_TRUE(c.Read32(*pcie + pci::kPcieDevCap) & pci::kPcieDevCapFlr);

  // MSI-X enable reaches the table; table size stays read-only.
  Wr(c, *msix + pci::kMsixControl, 0xffff, 2);
  EXPECT_EQ(c.Read16(*msix + pci::kMsixControl), 0xc003);
  EXPECT_TRUE(t.enabled());
  EXPECT_TRUE(t.function_masked());

  int flrs = 0;
  c.set_flr_callback([&] { ++flrs; });
  Wr(c, pci::kCommand, pci::kCommandMemory | pci::kCommandBusMaster, 2);
  Wr(c, *pcie + pci::kPcieDevCtl, 0x8000 | 0x2810, 2);
  EXPECT_EQ(flrs, 1);
  EXPECT_EQ(c.Read16(*pcie + pci::kPcieDevCtl) & 0x8000, 0);
  // The callback typically resets:
  c.Reset();
  EXPECT_EQ(c.command(), 0);
  EXPECT_FALSE(t.enabled());

  // Device status is RW1C.
  c.Write16Raw(*pcie + pci::kPcieDevSta, 0x5);
  Wr(c, *pcie + pci::kPcieDevSta, 0x1, 2);
  EXPECT_EQ(c.Read16(*pcie + pci::kPcieDevSta), 0x4);
  // PM power state writable, PME status RW1C.
  Wr(c, *pm + pci::kPmCsr, 0x3, 2);
  EXPECT_EQ(c.Read16(*pm + pci::kPmCsr) & 3, 3);
}

TEST(PciConfigSpaceTest, OutOfRangeAccessRefused) {
  PciConfigSpace c;
  uint8_t b[8];
  EXPECT_FALSE(c.Read(252, absl::MakeSpan(b, 8)).ok());
  EXPECT_FALSE(c.Read(~uint64_t{0} - 2, absl::MakeSpan(b, 8)).ok());
  EXPECT_FALSE(c.Write(256, absl::MakeConstSpan(b, 1)).ok());
  EXPECT_TRUE(c.Read(252, absl::MakeSpan(b, 4)).ok());
}

TEST(PciConfigSpaceTest, SaveRestoreRoundTrip) {
  PciConfigSpace a, b;
  for (PciConfigSpace* c : {&a, &b}) ASSERT_TRUE(c->SetBar(0, 0x1000, PciConfigSpace::BarType::kMem32).ok());
  Wr(a, pci::kBar0, 0xabcd0000, 4);
  ASSERT_TRUE(b.RestoreState(a.SaveState()).ok());
  EXPECT_EQ(b.BarAddress(0), 0xabcd0000u);
  EXPECT_FALSE(b.RestoreState("short").ok());
}

}  // namespace
}  // namespace emud::vfio_user
