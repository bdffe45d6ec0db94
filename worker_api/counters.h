// The counters a worker keeps, publishes in its status record and emud
// exports to Prometheus, declared once (Envoy's ALL_*_STATS style). Each list
// is X(name, help); the struct fields, the WorkerStatus mapping
// (dataplane/status_publisher.cc, DataPath::FillCounters) and the metric
// families (server/metrics.cc) are generated from these lists, so a counter
// added here appears everywhere and nowhere is it spelled twice.
//
// Order matters where a list declares a shared-memory layout
// (EMUD_QUEUE_COUNTERS in HotQueue, EMUD_DATAPATH_COUNTERS in the queue-state
// file header): append only, so that a successor of another build reads its
// predecessor's file.
#ifndef EMUD_WORKER_API_COUNTERS_H_
#define EMUD_WORKER_API_COUNTERS_H_

// Per queue and direction (HotQueue; WorkerStatus.rx / .tx QueueCounters;
// metric emud_dataplane_<name>_total{device,queue,direction}).
#define EMUD_QUEUE_COUNTERS(X)                                   \
  X(packets, "Packets moved by the data path")                   \
  X(bytes, "Bytes moved by the data path")                       \
  X(drops, "Packets dropped by the data path")                   \
  X(errors, "Data-path errors (bad descriptors, backend errors)")

// Per device, kept by the AVF model (avf::DeviceCounters): refused guest
// input and notable events. WorkerStatus.device_counters[name]; metric
// emud_device_<name>_total{device}.
#define EMUD_AVF_COUNTERS(X)                                                              \
  X(vc_messages, "virtchnl requests handled")                                            \
  X(vc_errors, "virtchnl requests answered with an error status")                        \
  X(vc_quarantined, "Poison virtchnl messages answered without being applied")           \
  X(vc_not_supported, "virtchnl requests answered NOT_SUPPORTED")                        \
  X(vc_bad_length, "virtchnl messages refused by the length rules")                      \
  X(vc_bad_queue_chunk,                                                                  \
    "ENABLE/DISABLE_QUEUES_V2 chunks or MAP_QUEUE_VECTOR maps refused (queue, vector, type)") \
  X(bad_tail_writes, "Queue tail writes at or beyond the ring length, ignored")          \
  X(ignored_tail_writes, "Tail writes of a queue the VF was not granted, ignored")         \
  X(bad_ring_addr, "Rings refused: outside the DMA map or misaligned")                   \
  X(vc_bad_rxdid, "RX queues refused: an RXDID not in GET_SUPPORTED_RXDIDS")            \
  X(odd_size_accesses, "BAR0 accesses that are not 4 or 8 bytes, aligned")               \
  X(vf_resets, "VF resets (RESET_VF)")                                                   \
  X(flrs, "Function-level resets (PCIe FLR, DEVICE_RESET)")                              \
  X(link_events, "Link-change events posted to the guest")                               \
  X(vlan_filters_full, "VLAN filter additions refused or stopped at the VF's limit")

// Per device, kept by the AVF model's admin queue (avf::AdminQueueCounters):
// the mailbox's own refusals and overflows. Same export as EMUD_AVF_COUNTERS.
#define EMUD_ADMIN_QUEUE_COUNTERS(X)                                                        \
  X(atq_processed, "Admin send-queue descriptors completed")                               \
  X(atq_bad_tail, "Admin send-queue doorbells with head or tail at or beyond ATQLEN")      \
  X(atq_dma_errors, "Admin send-queue descriptors or buffers outside the DMA map")         \
  X(atq_bad_datalen, "Admin send-queue messages longer than 4096 bytes, refused")          \
  X(atq_bad_opcode, "Admin send-queue descriptors with an opcode other than send-to-PF")   \
  X(arq_posted, "Messages posted to the guest's admin receive queue")                      \
  X(arq_dropped, "Replies and events dropped: receive queue disabled, broken or backlog full") \
  X(arq_truncated, "Messages longer than the receive buffer the guest posted, truncated")  \
  X(arq_dma_errors, "Admin receive-queue descriptors or buffers outside the DMA map")

// Per device, kept by the data path in the queue-state file header
// (dataplane::DataPathCounters). Same export as EMUD_AVF_COUNTERS.
#define EMUD_DATAPATH_COUNTERS(X)                                                   \
  X(rx_multicast, "Multicast frames offered to the guest's receive queues")         \
  X(rx_broadcast, "Broadcast frames offered to the guest's receive queues")         \
  X(rx_filtered, "Frames refused by the guest's MAC filter")                        \
  X(tx_malformed, "Transmitted packets dropped as malformed")                       \
  X(rx_vlan_filtered, "802.1Q frames refused by the guest's VLAN filter")           \
  X(tx_tunnel_malformed, "Of tx_malformed: tunnelled packets whose header lengths do not fit")

#endif  // EMUD_WORKER_API_COUNTERS_H_
