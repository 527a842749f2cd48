package archive

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// HostFactsWriter returns a writer that copies a checkpoint archive (an
// uncompressed tar, as the engines write them) to w and adds HostFactsFile
// with hf: at the end of a Podman archive, or just before the trailer of
// an orchestrate Docker archive (whose entry count it raises by one, so
// that engine/docker still accepts it). Engines ignore the extra file on
// restore. Close flushes the end of the archive and reports any error; on a
// stream that is not a tar, writes fail.
func HostFactsWriter(w io.Writer, hf HostFacts) io.WriteCloser {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := addHostFacts(w, pr, hf)
		pr.CloseWithError(err)
		done <- err
	}()
	return &factsWriter{pw: pw, done: done}
}

type factsWriter struct {
	pw   *io.PipeWriter
	done chan error
	err  error
	shut bool
}

func (f *factsWriter) Write(p []byte) (int, error) { return f.pw.Write(p) }

func (f *factsWriter) Close() error {
	if !f.shut {
		f.shut = true
		f.pw.Close()
		f.err = <-f.done
	}
	return f.err
}

func addHostFacts(w io.Writer, r io.Reader, hf HostFacts) error {
	facts, err := json.Marshal(hf)
	if err != nil {
		return err
	}
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	writeFacts := func() error {
		at := hf.At
		if at.IsZero() {
			at = time.Now()
		}
		if err := tw.WriteHeader(&tar.Header{Name: HostFactsFile, Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(facts)), ModTime: at, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(facts)
		return err
	}
	entries := 0
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			if entries == 0 {
				return fmt.Errorf("host facts: the checkpoint stream is empty")
			}
			if err := writeFacts(); err != nil {
				return err
			}
			if err := tw.Close(); err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, r) // the end-of-archive padding
			return nil
		}
		if err != nil {
			return fmt.Errorf("host facts: read the checkpoint stream: %w", err)
		}
		entries++
		if hdr.Name == DockerTrailerFile {
			var tl struct {
				Entries int `json:"entries"`
			}
			if err := json.NewDecoder(tr).Decode(&tl); err != nil {
				return fmt.Errorf("host facts: Docker trailer: %w", err)
			}
			if err := writeFacts(); err != nil {
				return err
			}
			tl.Entries++
			b, _ := json.Marshal(tl)
			hdr.Size = int64(len(b))
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if _, err := tw.Write(b); err != nil {
				return err
			}
			// Nothing follows a Docker trailer.
			if _, err := tr.Next(); !errors.Is(err, io.EOF) {
				return fmt.Errorf("host facts: an entry after the Docker trailer (%v)", err)
			}
			if err := tw.Close(); err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, r)
			return nil
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
}
