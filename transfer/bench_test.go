package transfer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strconv"
	"sync"
	"testing"
)

// Benchmarks send a checkpoint-like payload (4 KiB pages, alternately
// random and zero) over real SSH on loopback into a discarding handler.
// TRANSFER_BENCH_MIB sets its size (default 32). TRANSFER_BENCH_FILE names a
// file to read it from, created with that size if missing, so
// scripts/bench-transfer.sh can time scp on the very same bytes.

var (
	benchOnce sync.Once
	benchData []byte
	benchErr  error
)

func benchPayload(b *testing.B) []byte {
	benchOnce.Do(func() {
		mib := 32
		if v, err := strconv.Atoi(os.Getenv("TRANSFER_BENCH_MIB")); err == nil && v > 0 {
			mib = v
		}
		file := os.Getenv("TRANSFER_BENCH_FILE")
		if file == "" {
			benchData = payload(mib << 20)
			return
		}
		benchData, benchErr = os.ReadFile(file)
		if errors.Is(benchErr, os.ErrNotExist) {
			benchData, benchErr = payload(mib<<20), nil
			benchErr = os.WriteFile(file, benchData, 0o600)
		}
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchData
}

func benchStream(b *testing.B, comp Compression) {
	data := benchPayload(b)
	ts, client := pair(b, nil, func(c *ClientConfig) { c.Compression = comp })
	ts.srv.Handle("sink", func(ctx context.Context, h StreamHeader, r io.Reader) ([]byte, error) {
		_, err := io.Copy(io.Discard, r)
		return nil, err
	})
	ctx := context.Background()
	// Connect (and, for adaptive, learn the link) outside the timing.
	if _, _, err := client.SendStream(ctx, ts.addr, StreamHeader{Kind: "sink", ID: "warm"}, bytes.NewReader(data[:min(len(data), 8<<20)])); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	var wire, zst, chunks float64
	for b.Loop() {
		_, st, err := client.SendStream(ctx, ts.addr, StreamHeader{Kind: "sink", ID: "bench", Size: int64(len(data))}, bytes.NewReader(data))
		if err != nil {
			b.Fatal(err)
		}
		wire += float64(st.WireBytes)
		zst += float64(st.ZstdChunks)
		chunks += float64(st.ZstdChunks + st.RawChunks)
	}
	b.ReportMetric(wire/float64(b.N)/float64(len(data)), "wire/raw")
	b.ReportMetric(zst/max(chunks, 1), "zstd-share")
}

func BenchmarkStreamNone(b *testing.B)  { benchStream(b, Compression{Mode: CompressNone}) }
func BenchmarkStreamZstd1(b *testing.B) { benchStream(b, Compression{Mode: CompressZstd, Level: 1}) }
func BenchmarkStreamZstd3(b *testing.B) { benchStream(b, Compression{Mode: CompressZstd, Level: 3}) }
func BenchmarkStreamAdaptive(b *testing.B) {
	benchStream(b, Compression{Mode: CompressAdaptive, Level: 1})
}

// BenchmarkUpload is the SFTP path into our own server's spool.
func BenchmarkUpload(b *testing.B) {
	data := benchPayload(b)
	ts, client := pair(b, nil, nil)
	src := bytes.NewReader(data)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := client.UploadFrom(context.Background(), ts.addr, src, int64(len(data)), "bench.bin"); err != nil {
			b.Fatal(err)
		}
	}
}
