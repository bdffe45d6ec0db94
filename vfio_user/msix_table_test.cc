#include "vfio_user/msix_table.h"

#include <cstring>
#include <map>

#include "gtest/gtest.h"

namespace emud::vfio_user {
namespace {

class FakeSink : public InterruptSink {
 public:
  void TriggerMsix(uint32_t) override {}
  bool MsixPending(uint32_t v) const override { return pending.count(v) && pending.at(v); }
  bool MsixEnabled() const override { return enabled; }
  void SetMsixGuestMask(uint32_t v, bool m) override { masks[v] = m; }
  void SetMsixControl(bool e, bool f) override {
    enabled = e;
    fmask = f;
  }
  std::map<uint32_t, bool> pending, masks;
  bool enabled = false, fmask = false;
};

TEST(MsixTableTest, EntriesPowerOnMaskedAndWritable) {
  MsixTable t(3);
  EXPECT_EQ(t.table_bytes(), 48u);
  EXPECT_EQ(t.pba_bytes(), 8u);
  uint8_t buf[16];
  t.TableRead(16, absl::MakeSpan(buf));
  EXPECT_EQ(buf[12], 1);  // masked
  uint8_t entry[16] = {0x00, 0x10, 0xe0, 0xfe, 0, 0, 0, 0, 0x41, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff};
  t.TableWrite(16, entry);
  EXPECT_EQ(t.entry(1).address, 0xfee01000u);
  EXPECT_EQ(t.entry(1).data, 0x41u);
  EXPECT_EQ(t.entry(1).control, 0u);  // only bit 0 is writable
  EXPECT_FALSE(t.GuestMasked(1));
  // Out-of-table bytes read 0, writes ignored.
  t.TableRead(40, absl::MakeSpan(buf));
  EXPECT_EQ(buf[8], 0);
  t.TableWrite(~uint64_t{0} - 1, entry);
}

TEST(MsixTableTest, GuestMaskReachesSinkOnlyWhenWritten) {
  MsixTable t(2);
  FakeSink sink;
  t.Attach(&sink);
  EXPECT_TRUE(sink.masks.empty());
  uint32_t ctl = 0;
  t.TableWrite(12, absl::MakeConstSpan(reinterpret_cast<uint8_t*>(&ctl), 4));
  ASSERT_TRUE(sink.masks.count(0));
  EXPECT_FALSE(sink.masks[0]);
  ctl = 1;
  t.TableWrite(12, absl::MakeConstSpan(reinterpret_cast<uint8_t*>(&ctl), 4));
  EXPECT_TRUE(sink.masks[0]);
  EXPECT_FALSE(sink.masks.count(1));
  t.Reset();
  EXPECT_FALSE(sink.masks[0]);  // lapsed
  EXPECT_TRUE(t.GuestMasked(0));
}

TEST(MsixTableTest, PbaFromSink) {
  MsixTable t(70);
  FakeSink sink;
  uint8_t pba[16];
  t.PbaRead(0, absl::MakeSpan(pba));
  EXPECT_EQ(pba[0], 0);
  t.Attach(&sink);
  sink.pending[1] = true;
  sink.pending[65] = true;
  t.PbaRead(0, absl::MakeSpan(pba));
  EXPECT_EQ(pba[0], 2);
  EXPECT_EQ(pba[8], 2);
  EXPECT_EQ(pba[9], 0);
}

TEST(MsixTableTest, SaveRestore) {
  MsixTable a(4), b(4), c(5);
  uint8_t entry[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 0, 0, 0};
  a.TableWrite(32, entry);
  a.SetControl(true, false);
  ASSERT_TRUE(b.RestoreState(a.SaveState()).ok());
  EXPECT_EQ(b.entry(2).address, a.entry(2).address);
  EXPECT_FALSE(b.GuestMasked(2));
  EXPECT_TRUE(b.enabled());
  EXPECT_FALSE(c.RestoreState(a.SaveState()).ok());
}

}  // namespace
}  // namespace emud::vfio_user
