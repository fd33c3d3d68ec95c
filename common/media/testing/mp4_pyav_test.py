"""Decodes MP4s written by Mp4Writer (through mp4_writer_tool) with PyAV and checks them.

Usage: mp4_pyav_test.py <path to mp4_writer_tool>   (ctest passes it; run with /usr/bin/python3)

For each case the tool writes random content; this test checks the container layout (moov
before mdat), the video stream (codec, size, frame rate, frame count, timestamps, pixels against
the input) and the audio stream (codec, rate, channels, length, samples against the input).
"""
import fractions
import os
import shutil
import subprocess
import struct
import sys
import tempfile
import unittest

import av
import numpy as np

TOOL = None


def top_level_boxes(data):
    boxes, at = [], 0
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        if size < 8:
            raise AssertionError(f"box size {size} at {at}")
        boxes.append(kind.decode("latin-1"))
        at += size
    return boxes


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


class Mp4PyavTest(unittest.TestCase):

    def write(self, frames, width, height, fps, odd_size="pad", sample_rate=0, channels=2,
              audio_seconds=-1.0):
        out = tempfile.mkdtemp(prefix="mp4_pyav_")
        self.addCleanup(shutil.rmtree, out)
        subprocess.run([TOOL, f"--out={out}", f"--frames={frames}", f"--width={width}",
                        f"--height={height}", f"--fps_num={fps.numerator}",
                        f"--fps_den={fps.denominator}", f"--odd_size={odd_size}",
                        f"--sample_rate={sample_rate}", f"--channels={channels}",
                        f"--audio_seconds={audio_seconds}"],
                       check=True, stderr=subprocess.DEVNULL)
        raw = np.fromfile(os.path.join(out, "frames.rgb"), np.uint8)
        audio = None
        if sample_rate:
            audio = np.fromfile(os.path.join(out, "audio.f32"), np.float32).reshape(channels, -1)
        return os.path.join(out, "video.mp4"), raw.reshape(frames, height, width, 3), audio

    def check_video(self, path, source, fps, out_w, out_h, min_psnr=29.0):
        frames = source.shape[0]
        with open(path, "rb") as f:
            boxes = top_level_boxes(f.read())
        self.assertLess(boxes.index("moov"), boxes.index("mdat"), boxes)
        # The reference frames at the encoded size: crop, or repeat the last column/row.
        h, w = source.shape[1:3]
        expected = source[:, :min(h, out_h), :min(w, out_w)]
        if out_h > h:
            expected = np.concatenate([expected, expected[:, -1:]], axis=1)
        if out_w > w:
            expected = np.concatenate([expected, expected[:, :, -1:]], axis=2)
        with av.open(path) as container:
            stream = container.streams.video[0]
            self.assertEqual(stream.codec_context.name, "h264")
            self.assertEqual((stream.codec_context.width, stream.codec_context.height),
                             (out_w, out_h))
            self.assertEqual(stream.codec_context.pix_fmt, "yuv420p")
            self.assertEqual(stream.average_rate, fps)
            self.assertEqual(stream.frames, frames)
            self.assertAlmostEqual(float(stream.duration * stream.time_base),
                                   float(frames / fps), delta=1e-3)
            decoded = []
            for i, frame in enumerate(container.decode(stream)):
                self.assertAlmostEqual(frame.time, float(i / fps), delta=1e-3)
                rgb = frame.reformat(format="rgb24", src_colorspace="ITU709")
                decoded.append(rgb.to_ndarray())
        self.assertEqual(len(decoded), frames)
        # crf 19 on this noisy content measures 31-37 dB; decoding with the BT.601 matrix
        # instead of the tagged BT.709 one drops it to about 26 dB.
        quality = psnr(np.stack(decoded), expected)
        print(f"  video {out_w}x{out_h} {frames} frames @ {fps}: PSNR {quality:.2f} dB")
        self.assertGreater(quality, min_psnr)

    def check_audio(self, path, source, in_rate, out_rate):
        with av.open(path) as container:
            stream = container.streams.audio[0]
            self.assertEqual(stream.codec_context.name, "aac")
            self.assertEqual(stream.codec_context.sample_rate, out_rate)
            self.assertEqual(stream.codec_context.channels, 2)
            decoded = np.concatenate(
                [f.to_ndarray() for f in container.decode(stream)], axis=1)  # [2, n] fltp
            stream_seconds = float(stream.duration * stream.time_base)
            container_seconds = container.duration / 1e6
        in_seconds = source.shape[1] / in_rate
        self.assertAlmostEqual(stream_seconds, in_seconds, delta=1.5 / out_rate + 1e-3)
        self.assertEqual(decoded.shape[0], 2)
        # The decoder drops the encoder's priming through the edit list; the last AAC frame
        # may carry up to one frame (1024 samples) of padding.
        expected_samples = source.shape[1] * out_rate / in_rate
        self.assertGreaterEqual(decoded.shape[1], expected_samples - 2)
        self.assertLessEqual(decoded.shape[1], expected_samples + 1024)
        # Level survives encoding (and resampling): per-channel RMS within 10% of the input's.
        source_rms = np.sqrt(np.mean(source.astype(np.float64) ** 2, axis=1))
        decoded_rms = np.sqrt(np.mean(decoded[:, 1024:-1024].astype(np.float64) ** 2, axis=1))
        np.testing.assert_allclose(decoded_rms, np.broadcast_to(source_rms, (2,)), rtol=0.1)
        if in_rate == out_rate:
            reference = np.repeat(source, 2, axis=0) if source.shape[0] == 1 else source
            n = reference.shape[1]
            noise = decoded[:, :n] - reference
            snr = 10 * np.log10(np.sum(reference ** 2) / np.sum(noise ** 2))
            print(f"  audio {in_rate} Hz x{source.shape[0]}: SNR {snr:.1f} dB")
            self.assertGreater(snr, 15.0)
        return container_seconds

    def test_stereo_48k_24fps(self):
        fps = fractions.Fraction(24)
        path, frames, audio = self.write(24, 64, 48, fps, sample_rate=48000, channels=2)
        self.check_video(path, frames, fps, 64, 48)
        seconds = self.check_audio(path, audio, 48000, 48000)
        self.assertAlmostEqual(seconds, 1.0, delta=0.03)

    def test_odd_size_padded_ntsc_mono_44k(self):
        fps = fractions.Fraction(30000, 1001)
        path, frames, audio = self.write(30, 50, 31, fps, sample_rate=44100, channels=1)
        self.check_video(path, frames, fps, 50, 32)
        self.check_audio(path, audio, 44100, 44100)

    def test_resampled_audio_fractional_fps(self):
        fps = fractions.Fraction(25, 2)
        path, frames, audio = self.write(17, 66, 38, fps, sample_rate=37800, channels=2)
        self.check_video(path, frames, fps, 66, 38)
        self.check_audio(path, audio, 37800, 48000)

    def test_odd_size_cropped_no_audio(self):
        fps = fractions.Fraction(60)
        path, frames, _ = self.write(10, 33, 35, fps, odd_size="crop")
        self.check_video(path, frames, fps, 32, 34)
        with av.open(path) as container:
            self.assertEqual(len(container.streams.audio), 0)
            self.assertAlmostEqual(container.duration / 1e6, 10 / 60, delta=1e-3)

    def test_audio_longer_than_video_sets_the_file_duration(self):
        fps = fractions.Fraction(24)
        path, frames, audio = self.write(12, 32, 32, fps, sample_rate=48000, audio_seconds=2.0)
        self.check_video(path, frames, fps, 32, 32)
        seconds = self.check_audio(path, audio, 48000, 48000)
        self.assertAlmostEqual(seconds, 2.0, delta=0.03)


if __name__ == "__main__":
    TOOL = sys.argv.pop(1)
    unittest.main(verbosity=2)
