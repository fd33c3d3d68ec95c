#include "common/media/mp4_writer.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/audio_fifo.h>
#include <libavutil/channel_layout.h>
#include <libavutil/cpu.h>
#include <libavutil/opt.h>
#include <libswresample/swresample.h>
#include <libswscale/swscale.h>
}

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"

namespace diffmesh::media {
namespace {

constexpr int kIoBufferBytes = 1 << 16;
constexpr int kMaxSide = 16384;
constexpr int kAacFallbackRate = 48000;
// The encoders' per-file statistics are INFO messages; a server writes many files, so their
// messages are demoted one level (INFO becomes VERBOSE, hidden at FFmpeg's default level).
constexpr int kLogDemotion = AV_LOG_VERBOSE - AV_LOG_INFO;

absl::Status FfmpegError(absl::string_view what, int rc) {
  char text[AV_ERROR_MAX_STRING_SIZE] = {};
  av_strerror(rc, text, sizeof(text));
  return absl::InternalError(absl::StrCat("MP4: ", what, ": ", text));
}

// A seekable in-memory file: the muxer writes, seeks back to patch sizes and, for fast
// start, reads the file back while moving mdat behind moov.
struct MemoryFile {
  std::string data;
  int64_t pos = 0;
};

int WriteToMemory(void* opaque, uint8_t* buf, int size) {
  auto* file = static_cast<MemoryFile*>(opaque);
  const size_t end = static_cast<size_t>(file->pos) + size;
  if (end > file->data.size()) file->data.resize(end);
  std::memcpy(&file->data[file->pos], buf, size);
  file->pos = static_cast<int64_t>(end);
  return size;
}

// The position a seek lands on (or the size for AVSEEK_SIZE), or AVERROR(EINVAL).
int64_t ResolveSeek(int64_t pos, int64_t size, int64_t offset, int whence) {
  switch (whence & ~AVSEEK_FORCE) {
    case AVSEEK_SIZE:
      return size;
    case SEEK_SET:
      break;
    case SEEK_CUR:
      offset += pos;
      break;
    case SEEK_END:
      offset += size;
      break;
    default:
      return AVERROR(EINVAL);
  }
  return offset < 0 ? AVERROR(EINVAL) : offset;
}

int64_t SeekInMemory(void* opaque, int64_t offset, int whence) {
  auto* file = static_cast<MemoryFile*>(opaque);
  const int64_t pos =
      ResolveSeek(file->pos, static_cast<int64_t>(file->data.size()), offset, whence);
  if (pos >= 0 && (whence & ~AVSEEK_FORCE) != AVSEEK_SIZE) file->pos = pos;
  return pos;
}

// A read cursor over the file being written (what the fast-start pass re-opens).
struct MemoryReader {
  const std::string* data;
  int64_t pos = 0;
};

int ReadFromMemory(void* opaque, uint8_t* buf, int size) {
  auto* reader = static_cast<MemoryReader*>(opaque);
  const int64_t left = static_cast<int64_t>(reader->data->size()) - reader->pos;
  if (left <= 0) return AVERROR_EOF;
  const int n = static_cast<int>(std::min<int64_t>(left, size));
  std::memcpy(buf, reader->data->data() + reader->pos, n);
  reader->pos += n;
  return n;
}

int64_t SeekReader(void* opaque, int64_t offset, int whence) {
  auto* reader = static_cast<MemoryReader*>(opaque);
  const int64_t pos =
      ResolveSeek(reader->pos, static_cast<int64_t>(reader->data->size()), offset, whence);
  if (pos >= 0 && (whence & ~AVSEEK_FORCE) != AVSEEK_SIZE) reader->pos = pos;
  return pos;
}

AVIOContext* NewIoContext(bool write, void* opaque) {
  auto* buffer = static_cast<uint8_t*>(av_malloc(kIoBufferBytes));
  if (buffer == nullptr) return nullptr;
  AVIOContext* io = write ? avio_alloc_context(buffer, kIoBufferBytes, 1, opaque, nullptr,
                                               WriteToMemory, SeekInMemory)
                          : avio_alloc_context(buffer, kIoBufferBytes, 0, opaque, ReadFromMemory,
                                               nullptr, SeekReader);
  if (io == nullptr) av_free(buffer);
  return io;
}

void FreeIoContext(AVIOContext** io) {
  if (*io == nullptr) return;
  av_freep(&(*io)->buffer);
  avio_context_free(io);
}

// AVFormatContext::io_open: the mov muxer's fast-start pass re-opens its output for reading.
int OpenForReading(AVFormatContext* s, AVIOContext** pb, const char* url, int flags,
                   AVDictionary** options) {
  if (!(flags & AVIO_FLAG_READ) || (flags & AVIO_FLAG_WRITE)) return AVERROR(ENOSYS);
  auto* file = static_cast<MemoryFile*>(s->opaque);
  auto* reader = new MemoryReader{&file->data, 0};
  *pb = NewIoContext(/*write=*/false, reader);
  if (*pb == nullptr) {
    delete reader;
    return AVERROR(ENOMEM);
  }
  return 0;
}

int CloseReader(AVFormatContext* s, AVIOContext* pb) {
  delete static_cast<MemoryReader*>(pb->opaque);
  FreeIoContext(&pb);
  return 0;
}

absl::Status ValidateOptions(const Mp4Options& o) {
  if (o.width <= 0 || o.height <= 0 || o.width > kMaxSide || o.height > kMaxSide) {
    return absl::InvalidArgumentError(
        absl::StrCat("MP4: frame size ", o.width, "x", o.height, " is outside 1..", kMaxSide));
  }
  if (o.odd_size == OddSizePolicy::kReject && (o.width % 2 || o.height % 2)) {
    return absl::InvalidArgumentError(
        absl::StrCat("MP4: H.264 yuv420p needs even sides, got ", o.width, "x", o.height));
  }
  if ((o.width == 1 || o.height == 1) && o.odd_size == OddSizePolicy::kCrop) {
    return absl::InvalidArgumentError("MP4: cropping a 1-pixel side leaves nothing");
  }
  if (o.fps.num <= 0 || o.fps.den <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("MP4: frame rate must be positive, got ", o.fps.num, "/", o.fps.den));
  }
  if (o.crf < 0 || o.crf > 51 || o.threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("MP4: crf must be 0-51 and threads >= 0, got ", o.crf, ", ", o.threads));
  }
  if (o.audio_sample_rate < 0 || o.audio_sample_rate > 384000 ||
      (o.audio_sample_rate > 0 && o.audio_channels != 1 && o.audio_channels != 2)) {
    return absl::InvalidArgumentError(
        absl::StrCat("MP4: audio needs 1 or 2 channels and a rate of 1..384000 Hz, got ",
                     o.audio_channels, " channels at ", o.audio_sample_rate, " Hz"));
  }
  return absl::OkStatus();
}

int EvenSide(int side, OddSizePolicy policy) {
  if (side % 2 == 0) return side;
  return policy == OddSizePolicy::kCrop ? side - 1 : side + 1;
}

// The configured encoder (when it is an H.264 one), then every other H.264 encoder FFmpeg
// has, libx264 first; hardware encoders whose device is missing fail to open and are skipped.
std::vector<const AVCodec*> H264Encoders(const std::string& preferred) {
  std::vector<const AVCodec*> encoders;
  const AVCodec* first = avcodec_find_encoder_by_name(preferred.c_str());
  if (first != nullptr && first->id == AV_CODEC_ID_H264) encoders.push_back(first);
  void* iterator = nullptr;
  while (const AVCodec* codec = av_codec_iterate(&iterator)) {
    if (codec->id == AV_CODEC_ID_H264 && av_codec_is_encoder(codec) && codec != first) {
      encoders.push_back(codec);
    }
  }
  return encoders;
}

// The x264 "asm" capability list for this CPU, or "" to keep x264's own detection.
// x264 (core 164) has an AVX-512 macroblock-tree kernel (mbtree_propagate_list) that handles 8
// lookahead blocks per step and does not stop at the row's end. When the width in 16-pixel
// units is not a multiple of 8, the extra lanes read past the row (at the last row, into heap
// memory x264 never wrote) and add what they find into the tree's costs, so QPs (and frame
// sizes in stsz) depend on what earlier allocations left behind: two encodes of the same
// frames in one process can differ. The AVX2 version stops at the row's end. Every AVX-512 CPU has the whole set x264's "AVX2"
// name stands for (AVX, FMA3, BMI1/2, LZCNT, SSE up to 4.2), so the cap drops exactly the
// AVX-512 kernels and nothing else.
std::string X264CpuCapabilities() {
#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64) || defined(_M_IX86)
  if (av_get_cpu_flags() & AV_CPU_FLAG_AVX512) return "AVX2";
#endif
  return "";
}

// The input rate when the AAC encoder takes it, else 48 kHz (resampled).
int AacSampleRate(const AVCodec* codec, int input_rate) {
  for (const int* r = codec->supported_samplerates; r != nullptr && *r != 0; ++r) {
    if (*r == input_rate) return input_rate;
  }
  return codec->supported_samplerates == nullptr ? input_rate : kAacFallbackRate;
}

}  // namespace

FrameRate FrameRateFromDouble(double fps) {
  for (int base : {24, 30, 48, 60, 120}) {  // the NTSC family: base * 1000 / 1001
    if (std::abs(fps - base * 1000.0 / 1001.0) < 5e-3) return {base * 1000, 1001};
  }
  const AVRational q = av_d2q(fps, 1001000);
  return {q.num, q.den};
}

struct Mp4Writer::Impl {
  Mp4Options options;
  int out_width = 0;   // encoded width (even)
  int out_height = 0;  // encoded height (even)
  MemoryFile file;
  AVFormatContext* format = nullptr;
  AVIOContext* io = nullptr;
  AVCodecContext* video = nullptr;
  AVStream* video_stream = nullptr;
  AVCodecContext* audio = nullptr;
  AVStream* audio_stream = nullptr;
  SwsContext* to_yuv = nullptr;
  SwrContext* resampler = nullptr;  // null when the input rate is the AAC rate
  AVAudioFifo* fifo = nullptr;      // stereo fltp samples waiting for a full AAC frame
  AVFrame* yuv = nullptr;
  AVPacket* packet = nullptr;
  std::vector<uint8_t> padded;   // [out_height, out_width, 3] when padding odd sides
  std::vector<float> stereo;     // [2, n] clipped input audio
  std::vector<float> resampled;  // [2, n] resampler output
  int64_t next_video_pts = 0;    // in 1/fps
  int64_t next_audio_pts = 0;    // in 1/aac_rate
  bool finished = false;

  ~Impl();
  absl::Status OpenContainer();
  AVCodecContext* OpenVideoEncoder(const AVCodec* codec, std::string* error);
  absl::Status OpenVideo();
  absl::Status OpenAudio();
  absl::Status OpenConverters();
  absl::Status WriteHeader();
  absl::Status Encode(AVCodecContext* codec, AVStream* stream, const AVFrame* frame);
  const uint8_t* EvenFrame(const uint8_t* rgb);
  absl::Status QueueAudio(float** planes, int samples);
  absl::Status EncodeAudioFrames(bool final);
};

Mp4Writer::Impl::~Impl() {
  avcodec_free_context(&video);
  avcodec_free_context(&audio);
  sws_freeContext(to_yuv);
  swr_free(&resampler);
  if (fifo != nullptr) av_audio_fifo_free(fifo);
  av_frame_free(&yuv);
  av_packet_free(&packet);
  avformat_free_context(format);
  FreeIoContext(&io);
}

absl::Status Mp4Writer::Impl::OpenContainer() {
  int rc = avformat_alloc_output_context2(&format, nullptr, "mp4", nullptr);
  if (rc < 0) return FfmpegError("no mp4 muxer", rc);
  io = NewIoContext(/*write=*/true, &file);
  if (io == nullptr) return absl::ResourceExhaustedError("MP4: cannot allocate the output");
  format->pb = io;
  format->flags |= AVFMT_FLAG_CUSTOM_IO | AVFMT_FLAG_BITEXACT;
  format->url = av_strdup("memory.mp4");  // re-opened by name by the fast-start pass
  format->opaque = &file;
  format->io_open = OpenForReading;
  format->io_close2 = CloseReader;
  packet = av_packet_alloc();
  return packet != nullptr ? absl::OkStatus()
                           : absl::ResourceExhaustedError("MP4: av_packet_alloc failed");
}

// A configured, opened `codec` context, or null with the reason in `error`.
AVCodecContext* Mp4Writer::Impl::OpenVideoEncoder(const AVCodec* codec, std::string* error) {
  AVCodecContext* ctx = avcodec_alloc_context3(codec);
  if (ctx == nullptr) {
    *error = "out of memory";
    return nullptr;
  }
  ctx->width = out_width;
  ctx->height = out_height;
  ctx->pix_fmt = AV_PIX_FMT_YUV420P;
  ctx->time_base = AVRational{options.fps.den, options.fps.num};
  ctx->framerate = AVRational{options.fps.num, options.fps.den};
  ctx->color_range = AVCOL_RANGE_MPEG;
  ctx->colorspace = AVCOL_SPC_BT709;
  ctx->color_primaries = AVCOL_PRI_BT709;
  ctx->color_trc = AVCOL_TRC_BT709;
  ctx->thread_count = options.threads;
  ctx->flags |= AV_CODEC_FLAG_BITEXACT;
  ctx->log_level_offset = kLogDemotion;
  if (format->oformat->flags & AVFMT_GLOBALHEADER) ctx->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  if (std::strcmp(codec->name, "libx264") == 0) {
    av_opt_set(ctx->priv_data, "preset", options.preset.c_str(), 0);
    av_opt_set_double(ctx->priv_data, "crf", options.crf, 0);
    const std::string capabilities = X264CpuCapabilities();
    if (!capabilities.empty()) {
      av_opt_set(ctx->priv_data, "x264-params", ("asm=" + capabilities).c_str(), 0);
    }
  } else {
    ctx->bit_rate = options.fallback_bit_rate;
  }
  const int rc = avcodec_open2(ctx, codec, nullptr);
  if (rc < 0) {
    *error = std::string(FfmpegError(codec->name, rc).message());
    avcodec_free_context(&ctx);
  }
  return ctx;
}

absl::Status Mp4Writer::Impl::OpenVideo() {
  std::string errors;
  for (const AVCodec* codec : H264Encoders(options.video_encoder)) {
    std::string error;
    video = OpenVideoEncoder(codec, &error);
    if (video != nullptr) break;
    absl::StrAppend(&errors, errors.empty() ? "" : "; ", error);
  }
  if (video == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("MP4: no H.264 encoder could be opened", errors.empty() ? "" : ": ", errors));
  }
  video_stream = avformat_new_stream(format, nullptr);
  if (video_stream == nullptr) return absl::ResourceExhaustedError("MP4: no video stream");
  const int rc = avcodec_parameters_from_context(video_stream->codecpar, video);
  if (rc < 0) return FfmpegError("video parameters", rc);
  video_stream->time_base = video->time_base;
  video_stream->avg_frame_rate = video->framerate;
  return absl::OkStatus();
}

absl::Status Mp4Writer::Impl::OpenAudio() {
  const AVCodec* codec = avcodec_find_encoder_by_name("aac");
  if (codec == nullptr) return absl::FailedPreconditionError("MP4: FFmpeg has no aac encoder");
  audio = avcodec_alloc_context3(codec);
  if (audio == nullptr) return absl::ResourceExhaustedError("MP4: no audio codec context");
  audio->sample_fmt = AV_SAMPLE_FMT_FLTP;
  audio->sample_rate = AacSampleRate(codec, options.audio_sample_rate);
  av_channel_layout_default(&audio->ch_layout, 2);
  audio->bit_rate = options.audio_bit_rate;
  audio->time_base = AVRational{1, audio->sample_rate};
  audio->thread_count = 1;
  audio->flags |= AV_CODEC_FLAG_BITEXACT;
  audio->log_level_offset = kLogDemotion;
  if (format->oformat->flags & AVFMT_GLOBALHEADER) audio->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  int rc = avcodec_open2(audio, codec, nullptr);
  if (rc < 0) return FfmpegError("cannot open the aac encoder", rc);
  audio_stream = avformat_new_stream(format, nullptr);
  if (audio_stream == nullptr) return absl::ResourceExhaustedError("MP4: no audio stream");
  rc = avcodec_parameters_from_context(audio_stream->codecpar, audio);
  if (rc < 0) return FfmpegError("audio parameters", rc);
  audio_stream->time_base = audio->time_base;
  fifo = av_audio_fifo_alloc(AV_SAMPLE_FMT_FLTP, 2, audio->frame_size);
  return fifo != nullptr ? absl::OkStatus() : absl::ResourceExhaustedError("MP4: no audio buffer");
}

absl::Status Mp4Writer::Impl::OpenConverters() {
  // RGB (full range) to BT.709 limited-range yuv420p, matching the stream's colour tags.
  to_yuv = sws_getContext(out_width, out_height, AV_PIX_FMT_RGB24, out_width, out_height,
                          AV_PIX_FMT_YUV420P, SWS_BICUBIC | SWS_ACCURATE_RND | SWS_BITEXACT,
                          nullptr, nullptr, nullptr);
  if (to_yuv == nullptr) return absl::InternalError("MP4: sws_getContext failed");
  const int* bt709 = sws_getCoefficients(SWS_CS_ITU709);
  sws_setColorspaceDetails(to_yuv, bt709, /*srcRange=*/1, bt709, /*dstRange=*/0, 0, 1 << 16,
                           1 << 16);
  yuv = av_frame_alloc();
  if (yuv == nullptr) return absl::ResourceExhaustedError("MP4: av_frame_alloc failed");
  yuv->format = AV_PIX_FMT_YUV420P;
  yuv->width = out_width;
  yuv->height = out_height;
  int rc = av_frame_get_buffer(yuv, 0);
  if (rc < 0) return FfmpegError("frame buffer", rc);
  if (audio == nullptr || audio->sample_rate == options.audio_sample_rate) {
    return absl::OkStatus();
  }
  AVChannelLayout stereo = AV_CHANNEL_LAYOUT_STEREO;
  rc = swr_alloc_set_opts2(&resampler, &stereo, AV_SAMPLE_FMT_FLTP, audio->sample_rate, &stereo,
                           AV_SAMPLE_FMT_FLTP, options.audio_sample_rate, 0, nullptr);
  if (rc >= 0) rc = swr_init(resampler);
  return rc < 0 ? FfmpegError("resampler", rc) : absl::OkStatus();
}

absl::Status Mp4Writer::Impl::WriteHeader() {
  AVDictionary* muxer_options = nullptr;
  av_dict_set(&muxer_options, "movflags", "+faststart", 0);
  const int rc = avformat_write_header(format, &muxer_options);
  av_dict_free(&muxer_options);
  if (rc < 0) return FfmpegError("cannot write the header", rc);
  return absl::OkStatus();
}

// Sends `frame` (null = flush) and muxes every packet the encoder has ready.
absl::Status Mp4Writer::Impl::Encode(AVCodecContext* codec, AVStream* stream,
                                     const AVFrame* frame) {
  int rc = avcodec_send_frame(codec, frame);
  if (rc < 0) return FfmpegError(absl::StrCat(codec->codec->name, " send"), rc);
  while (true) {
    rc = avcodec_receive_packet(codec, packet);
    if (rc == AVERROR(EAGAIN) || rc == AVERROR_EOF) return absl::OkStatus();
    if (rc < 0) return FfmpegError(absl::StrCat(codec->codec->name, " receive"), rc);
    if (packet->duration == 0 && codec == video) packet->duration = 1;  // one frame
    av_packet_rescale_ts(packet, codec->time_base, stream->time_base);
    packet->stream_index = stream->index;
    rc = av_interleaved_write_frame(format, packet);  // takes the packet's reference
    if (rc < 0) return FfmpegError("cannot mux a packet", rc);
  }
}

// The frame at the encoded (even) size: the input itself, or a copy with the last column/row
// repeated. Cropping needs no copy: the converter reads out_width x out_height of the input.
const uint8_t* Mp4Writer::Impl::EvenFrame(const uint8_t* rgb) {
  if (out_width <= options.width && out_height <= options.height) return rgb;
  padded.resize(static_cast<size_t>(out_width) * out_height * 3);
  const size_t in_row = static_cast<size_t>(options.width) * 3;
  const size_t out_row = static_cast<size_t>(out_width) * 3;
  for (int y = 0; y < out_height; ++y) {
    const uint8_t* src = rgb + std::min(y, options.height - 1) * in_row;
    uint8_t* dst = padded.data() + y * out_row;
    std::memcpy(dst, src, in_row);
    if (out_width > options.width) std::memcpy(dst + in_row, src + in_row - 3, 3);
  }
  return padded.data();
}

absl::Status Mp4Writer::Impl::QueueAudio(float** planes, int samples) {
  const int written = av_audio_fifo_write(fifo, reinterpret_cast<void**>(planes), samples);
  if (written < samples) {
    return FfmpegError("audio buffer", written < 0 ? written : AVERROR(ENOMEM));
  }
  return EncodeAudioFrames(/*final=*/false);
}

// Encodes whole AAC frames from the FIFO; with `final`, also the short last one.
absl::Status Mp4Writer::Impl::EncodeAudioFrames(bool final) {
  while (av_audio_fifo_size(fifo) >= audio->frame_size || (final && av_audio_fifo_size(fifo) > 0)) {
    AVFrame* frame = av_frame_alloc();
    if (frame == nullptr) return absl::ResourceExhaustedError("MP4: av_frame_alloc failed");
    frame->nb_samples = std::min(av_audio_fifo_size(fifo), audio->frame_size);
    frame->format = AV_SAMPLE_FMT_FLTP;
    frame->sample_rate = audio->sample_rate;
    av_channel_layout_copy(&frame->ch_layout, &audio->ch_layout);
    int rc = av_frame_get_buffer(frame, 0);
    if (rc >= 0) {
      rc = av_audio_fifo_read(fifo, reinterpret_cast<void**>(frame->data), frame->nb_samples);
    }
    frame->pts = next_audio_pts;
    next_audio_pts += frame->nb_samples;
    absl::Status status =
        rc < 0 ? FfmpegError("audio frame", rc) : Encode(audio, audio_stream, frame);
    av_frame_free(&frame);
    RETURN_IF_ERROR(status);
  }
  return absl::OkStatus();
}

Mp4Writer::Mp4Writer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Mp4Writer::~Mp4Writer() = default;

absl::StatusOr<std::unique_ptr<Mp4Writer>> Mp4Writer::Create(const Mp4Options& options) {
  RETURN_IF_ERROR(ValidateOptions(options));
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->out_width = EvenSide(options.width, options.odd_size);
  impl->out_height = EvenSide(options.height, options.odd_size);
  RETURN_IF_ERROR(impl->OpenContainer());
  RETURN_IF_ERROR(impl->OpenVideo());
  if (options.audio_sample_rate > 0) RETURN_IF_ERROR(impl->OpenAudio());
  RETURN_IF_ERROR(impl->OpenConverters());
  RETURN_IF_ERROR(impl->WriteHeader());
  return std::unique_ptr<Mp4Writer>(new Mp4Writer(std::move(impl)));
}

absl::Status Mp4Writer::AddFrame(const uint8_t* rgb) {
  Impl& m = *impl_;
  if (m.finished) return absl::FailedPreconditionError("MP4: AddFrame after Finish");
  if (rgb == nullptr) return absl::InvalidArgumentError("MP4: null frame");
  int rc = av_frame_make_writable(m.yuv);
  if (rc < 0) return FfmpegError("frame buffer", rc);
  const uint8_t* even = m.EvenFrame(rgb);
  const int stride = (even == rgb ? m.options.width : m.out_width) * 3;
  sws_scale(m.to_yuv, &even, &stride, 0, m.out_height, m.yuv->data, m.yuv->linesize);
  m.yuv->pts = m.next_video_pts++;
  return m.Encode(m.video, m.video_stream, m.yuv);
}

absl::Status Mp4Writer::AddAudio(const float* planar, int64_t samples) {
  Impl& m = *impl_;
  if (m.audio == nullptr) return absl::FailedPreconditionError("MP4: the writer has no audio");
  if (m.finished) return absl::FailedPreconditionError("MP4: AddAudio after Finish");
  if (planar == nullptr || samples <= 0 || samples > (1 << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("MP4: bad audio sample count ", samples));
  }
  const int n = static_cast<int>(samples);
  m.stereo.resize(2 * static_cast<size_t>(n));
  for (int c = 0; c < 2; ++c) {  // mono: both channels carry the one input channel
    const float* src = planar + (m.options.audio_channels == 2 ? c * samples : 0);
    float* dst = m.stereo.data() + c * n;
    // The AAC encoder refuses non-finite samples: NaN becomes silence, ±inf the full scale.
    for (int i = 0; i < n; ++i) dst[i] = std::isnan(src[i]) ? 0.0f : std::clamp(src[i], -1.0f, 1.0f);
  }
  float* in[2] = {m.stereo.data(), m.stereo.data() + n};
  if (m.resampler == nullptr) return m.QueueAudio(in, n);
  const int capacity = swr_get_out_samples(m.resampler, n);
  m.resampled.resize(2 * static_cast<size_t>(capacity));
  float* out[2] = {m.resampled.data(), m.resampled.data() + capacity};
  const int got = swr_convert(m.resampler, reinterpret_cast<uint8_t**>(out), capacity,
                              const_cast<const uint8_t**>(reinterpret_cast<uint8_t**>(in)), n);
  if (got < 0) return FfmpegError("resampling", got);
  return m.QueueAudio(out, got);
}

absl::StatusOr<std::string> Mp4Writer::Finish() {
  Impl& m = *impl_;
  if (m.finished) return absl::FailedPreconditionError("MP4: Finish called twice");
  if (m.next_video_pts == 0) return absl::FailedPreconditionError("MP4: no frames were added");
  if (m.resampler != nullptr) {  // the resampler's delayed tail
    const int capacity = swr_get_out_samples(m.resampler, 0);
    m.resampled.resize(2 * static_cast<size_t>(std::max(capacity, 1)));
    float* out[2] = {m.resampled.data(), m.resampled.data() + std::max(capacity, 1)};
    const int got =
        swr_convert(m.resampler, reinterpret_cast<uint8_t**>(out), capacity, nullptr, 0);
    if (got < 0) return FfmpegError("resampling", got);
    if (got > 0) RETURN_IF_ERROR(m.QueueAudio(out, got));
  }
  if (m.audio != nullptr) {
    RETURN_IF_ERROR(m.EncodeAudioFrames(/*final=*/true));
    RETURN_IF_ERROR(m.Encode(m.audio, m.audio_stream, nullptr));
  }
  RETURN_IF_ERROR(m.Encode(m.video, m.video_stream, nullptr));
  m.finished = true;
  const int rc = av_write_trailer(m.format);
  if (rc < 0) return FfmpegError("cannot finish the file", rc);
  avio_flush(m.io);
  return std::move(m.file.data);
}

absl::StatusOr<std::string> EncodeMp4(const uint8_t* frames, int num_frames,
                                      const Mp4Options& options, const float* audio,
                                      int64_t audio_samples) {
  if (num_frames <= 0 || frames == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("MP4: need frames, got ", num_frames));
  }
  if (options.audio_sample_rate > 0 && (audio == nullptr || audio_samples <= 0)) {
    return absl::InvalidArgumentError("MP4: audio_sample_rate is set but no audio was given");
  }
  if (options.audio_sample_rate == 0 && audio != nullptr && audio_samples > 0) {
    return absl::InvalidArgumentError("MP4: audio was given but audio_sample_rate is 0");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Mp4Writer> writer, Mp4Writer::Create(options));
  if (options.audio_sample_rate > 0) RETURN_IF_ERROR(writer->AddAudio(audio, audio_samples));
  const size_t frame_bytes = static_cast<size_t>(options.width) * options.height * 3;
  for (int i = 0; i < num_frames; ++i) RETURN_IF_ERROR(writer->AddFrame(frames + i * frame_bytes));
  return writer->Finish();
}

}  // namespace diffmesh::media
