package proxy

import (
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestUDPBatchSender(t *testing.T) {
	tests := []struct {
		name string
		fill func(sa *unix.RawSockaddrInet6) uint32
		want netip.AddrPort
	}{
		{"IPv4", func(sa *unix.RawSockaddrInet6) uint32 {
			sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
			sa4.Family, sa4.Addr = unix.AF_INET, [4]byte{10, 0, 0, 7}
			(*[2]byte)(unsafe.Pointer(&sa4.Port))[0], (*[2]byte)(unsafe.Pointer(&sa4.Port))[1] = 0x12, 0x34
			return unix.SizeofSockaddrInet4
		}, netip.MustParseAddrPort("10.0.0.7:4660")},
		{"IPv6", func(sa *unix.RawSockaddrInet6) uint32 {
			sa.Family, sa.Addr = unix.AF_INET6, netip.MustParseAddr("fd00::5").As16()
			(*[2]byte)(unsafe.Pointer(&sa.Port))[0], (*[2]byte)(unsafe.Pointer(&sa.Port))[1] = 0, 53
			return unix.SizeofSockaddrInet6
		}, netip.MustParseAddrPort("[fd00::5]:53")},
		{"v4-mapped stays mapped", func(sa *unix.RawSockaddrInet6) uint32 {
			sa.Family, sa.Addr = unix.AF_INET6, netip.MustParseAddr("::ffff:10.0.0.7").As16()
			(*[2]byte)(unsafe.Pointer(&sa.Port))[1] = 80
			return unix.SizeofSockaddrInet6
		}, netip.MustParseAddrPort("[::ffff:10.0.0.7]:80")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newUDPBatch(true)
			b.msgs[2].Hdr.Namelen = tt.fill(&b.names[2])
			got, name := b.sender(2)
			if got != tt.want {
				t.Fatalf("sender %v, want %v", got, tt.want)
			}
			if name.len != b.msgs[2].Hdr.Namelen || name.raw != b.names[2] {
				t.Fatalf("name %+v not the raw sockaddr", name)
			}
		})
	}
}
