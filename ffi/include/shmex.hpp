// shmex.hpp: a header-only C++17 wrapper of shmex.h. RAII handles (move-only; the
// destructor frees), exceptions carrying the status and message (shmex::error), views over
// received tensors (shmex::view: pointer + size, C++17 has no std::span).
//
// Lifetimes are those of the C API: a tensor view from a task or reply is valid while that
// task or reply object lives; data given to execute/submit is read during the call only.
// Loans (shmex::result_loan, shmex::task_loan) hand out writable views into shared memory,
// valid until the loan is committed/executed or destroyed; a loan destroyed without
// commit()/execute() is abandoned (nothing is sent).
// Thread-safety: as the C functions (handles may be shared; a task/reply is read-only).
// Options are the C structs (shmex_agent_options, shmex_exchanger_options): take the
// defaults from shmex::default_agent_options() / default_exchanger_options(), change fields,
// and pass their address to the constructor.
#ifndef SHMEX_HPP
#define SHMEX_HPP

#include <shmex.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shmex {

// A failed call: the status (shmex_status) and the text of shmex_last_error_message().
class error : public std::runtime_error {
public:
    error(shmex_status status, const std::string &call)
        : std::runtime_error(call + ": " + shmex_status_name(status) + ": " +
                             shmex_last_error_message()),
          status_(status) {}
    shmex_status status() const noexcept { return status_; }

private:
    shmex_status status_;
};

namespace detail {
inline void check(shmex_status status, const char *call) {
    if (status != SHMEX_OK) throw error(status, call);
}
}  // namespace detail

// The default agent options (shmex_agent_options_default), to change and pass to agent.
inline shmex_agent_options default_agent_options() {
    shmex_agent_options options{};
    detail::check(shmex_agent_options_default(&options), "shmex_agent_options_default");
    return options;
}

// The default exchanger options (shmex_exchanger_options_default), to change and pass to
// exchanger.
inline shmex_exchanger_options default_exchanger_options() {
    shmex_exchanger_options options{};
    detail::check(shmex_exchanger_options_default(&options), "shmex_exchanger_options_default");
    return options;
}

// A contiguous read-only or mutable range: a pointer and a count.
template <class T>
class view {
public:
    constexpr view() noexcept = default;
    constexpr view(T *data, std::size_t size) noexcept : data_(data), size_(size) {}
    constexpr T *data() const noexcept { return data_; }
    constexpr std::size_t size() const noexcept { return size_; }
    constexpr bool empty() const noexcept { return size_ == 0; }
    constexpr T *begin() const noexcept { return data_; }
    constexpr T *end() const noexcept { return data_ + size_; }
    constexpr T &operator[](std::size_t i) const noexcept { return data_[i]; }

private:
    T *data_ = nullptr;
    std::size_t size_ = 0;
};

// The shmex_dtype of an element type.
template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr uint32_t value = SHMEX_DTYPE_F32; };
template <> struct dtype_of<double> { static constexpr uint32_t value = SHMEX_DTYPE_F64; };
template <> struct dtype_of<int8_t> { static constexpr uint32_t value = SHMEX_DTYPE_I8; };
template <> struct dtype_of<int16_t> { static constexpr uint32_t value = SHMEX_DTYPE_I16; };
template <> struct dtype_of<int32_t> { static constexpr uint32_t value = SHMEX_DTYPE_I32; };
template <> struct dtype_of<int64_t> { static constexpr uint32_t value = SHMEX_DTYPE_I64; };
template <> struct dtype_of<uint8_t> { static constexpr uint32_t value = SHMEX_DTYPE_U8; };
template <> struct dtype_of<uint16_t> { static constexpr uint32_t value = SHMEX_DTYPE_U16; };
template <> struct dtype_of<uint32_t> { static constexpr uint32_t value = SHMEX_DTYPE_U32; };
template <> struct dtype_of<uint64_t> { static constexpr uint32_t value = SHMEX_DTYPE_U64; };

// A received tensor, viewed in place (valid while its task or reply lives).
struct tensor {
    shmex_tensor raw;

    std::string_view name() const { return raw.name; }
    uint32_t dtype() const noexcept { return raw.dtype; }
    view<const uint64_t> shape() const noexcept { return {raw.shape, raw.ndim}; }
    std::size_t bytes() const noexcept { return raw.len; }
    // The elements as T; throws shmex::error(SHMEX_WRONG_DTYPE) if T is not the dtype.
    template <class T>
    view<const T> as() const {
        if (raw.dtype != dtype_of<T>::value) throw error(SHMEX_WRONG_DTYPE, "tensor::as");
        return {static_cast<const T *>(raw.data), raw.len / sizeof(T)};
    }
};

// Data to send (a DXO): kind, meta JSON, tensors over the caller's memory (not copied until
// execute/submit; the memory must outlive those calls).
class data {
public:
    explicit data(uint32_t data_kind = SHMEX_DATA_KIND_WEIGHTS, std::string meta_json = "{}")
        : kind_(data_kind), meta_(std::move(meta_json)) {}

    template <class T>
    data &add(std::string name, std::vector<uint64_t> shape, view<const T> values) {
        return add_bytes(std::move(name), dtype_of<T>::value, std::move(shape), values.data(),
                         values.size() * sizeof(T));
    }
    data &add_bytes(std::string name, uint32_t dtype, std::vector<uint64_t> shape,
                    const void *bytes, std::size_t len) {
        entries_.push_back(entry{std::move(name), dtype, std::move(shape), bytes, len});
        return *this;
    }
    // The C description; valid until this object changes or is destroyed.
    const shmex_data *c() const {
        tensors_.clear();
        for (const entry &e : entries_)
            tensors_.push_back(shmex_tensor{e.name.c_str(), e.dtype, e.shape.size(),
                                            e.shape.data(), e.bytes, e.len});
        raw_ = shmex_data{kind_, meta_.c_str(), tensors_.data(), tensors_.size()};
        return &raw_;
    }

private:
    struct entry {
        std::string name;
        uint32_t dtype;
        std::vector<uint64_t> shape;
        const void *bytes;
        std::size_t len;
    };
    uint32_t kind_;
    std::string meta_;
    std::vector<entry> entries_;
    mutable std::vector<shmex_tensor> tensors_;
    mutable shmex_data raw_{};
};

// A loaned tensor: writable bytes in shared memory (valid until its loan ends).
struct tensor_mut {
    shmex_tensor_mut raw;

    std::string_view name() const { return raw.name; }
    uint32_t dtype() const noexcept { return raw.dtype; }
    view<const uint64_t> shape() const noexcept { return {raw.shape, raw.ndim}; }
    std::size_t bytes() const noexcept { return raw.len; }
    // The elements as T, to be written; throws shmex::error(SHMEX_WRONG_DTYPE) if T is not
    // the dtype.
    template <class T>
    view<T> as() const {
        if (raw.dtype != dtype_of<T>::value) throw error(SHMEX_WRONG_DTYPE, "tensor_mut::as");
        return {static_cast<T *>(raw.data), raw.len / sizeof(T)};
    }
};

// The layout of a loan: kind, meta JSON, and each tensor's name, dtype and shape.
class loan_spec {
public:
    explicit loan_spec(uint32_t data_kind = SHMEX_DATA_KIND_WEIGHTS, std::string meta_json = "{}")
        : kind_(data_kind), meta_(std::move(meta_json)) {}

    loan_spec &add(std::string name, uint32_t dtype, std::vector<uint64_t> shape) {
        entries_.push_back(entry{std::move(name), dtype, std::move(shape)});
        return *this;
    }
    template <class T>
    loan_spec &add(std::string name, std::vector<uint64_t> shape) {
        return add(std::move(name), dtype_of<T>::value, std::move(shape));
    }
    // The C description; valid until this object changes or is destroyed.
    const shmex_loan_spec *c() const {
        tensors_.clear();
        for (const entry &e : entries_)
            tensors_.push_back(
                shmex_tensor_spec{e.name.c_str(), e.dtype, e.shape.size(), e.shape.data()});
        raw_ = shmex_loan_spec{kind_, meta_.c_str(), tensors_.data(), tensors_.size()};
        return &raw_;
    }

private:
    struct entry {
        std::string name;
        uint32_t dtype;
        std::vector<uint64_t> shape;
    };
    uint32_t kind_;
    std::string meta_;
    std::vector<entry> entries_;
    mutable std::vector<shmex_tensor_spec> tensors_;
    mutable shmex_loan_spec raw_{};
};

namespace detail {
// A move-only owner of a C handle.
template <class H, shmex_status (*Free)(H *)>
class handle {
public:
    handle() noexcept = default;
    explicit handle(H *h) noexcept : h_(h) {}
    handle(handle &&other) noexcept : h_(std::exchange(other.h_, nullptr)) {}
    handle &operator=(handle &&other) noexcept {
        if (this != &other) {
            reset();
            h_ = std::exchange(other.h_, nullptr);
        }
        return *this;
    }
    handle(const handle &) = delete;
    handle &operator=(const handle &) = delete;
    ~handle() { reset(); }
    void reset() noexcept {
        if (h_ != nullptr) (void)Free(std::exchange(h_, nullptr));
    }
    H *get() const noexcept { return h_; }
    // Gives up ownership (the C call it was passed to ended the handle).
    H *release() noexcept { return std::exchange(h_, nullptr); }

private:
    H *h_ = nullptr;
};
}  // namespace detail

// A fetched task (shmex_task).
class task {
public:
    explicit task(shmex_task *h) noexcept : h_(h) {}
    std::string_view id() const { return str(shmex_task_id, "shmex_task_id"); }
    std::string_view name() const { return str(shmex_task_name, "shmex_task_name"); }
    std::string_view meta_json() const { return str(shmex_task_meta, "shmex_task_meta"); }
    std::size_t tensor_count() const {
        std::size_t n = 0;
        detail::check(shmex_task_tensor_count(h_.get(), &n), "shmex_task_tensor_count");
        return n;
    }
    tensor at(std::size_t index) const {
        tensor t{};
        detail::check(shmex_task_tensor(h_.get(), index, &t.raw), "shmex_task_tensor");
        return t;
    }
    tensor operator[](const std::string &name) const {
        tensor t{};
        detail::check(shmex_task_tensor_by_name(h_.get(), name.c_str(), &t.raw),
                      "shmex_task_tensor_by_name");
        return t;
    }
    // Whether the task is read in place in the task ring (shmex_task_is_in_place): its ring
    // space is then taken until this object is destroyed.
    bool in_place() const {
        bool in_place = false;
        detail::check(shmex_task_is_in_place(h_.get(), &in_place), "shmex_task_is_in_place");
        return in_place;
    }
    shmex_task *native() const noexcept { return h_.get(); }

private:
    std::string_view str(shmex_status (*f)(const shmex_task *, const char **),
                         const char *call) const {
        const char *s = nullptr;
        detail::check(f(h_.get(), &s), call);
        return s;
    }
    detail::handle<shmex_task, shmex_task_free> h_;
};

// The reply of execute (shmex_reply).
class reply {
public:
    explicit reply(shmex_reply *h) noexcept : h_(h) {}
    uint32_t rc() const {
        uint32_t rc = 0;
        detail::check(shmex_reply_rc(h_.get(), &rc), "shmex_reply_rc");
        return rc;
    }
    std::string_view meta_json() const {
        const char *s = nullptr;
        detail::check(shmex_reply_meta(h_.get(), &s), "shmex_reply_meta");
        return s;
    }
    std::size_t tensor_count() const {
        std::size_t n = 0;
        detail::check(shmex_reply_tensor_count(h_.get(), &n), "shmex_reply_tensor_count");
        return n;
    }
    tensor at(std::size_t index) const {
        tensor t{};
        detail::check(shmex_reply_tensor(h_.get(), index, &t.raw), "shmex_reply_tensor");
        return t;
    }
    tensor operator[](const std::string &name) const {
        tensor t{};
        detail::check(shmex_reply_tensor_by_name(h_.get(), name.c_str(), &t.raw),
                      "shmex_reply_tensor_by_name");
        return t;
    }
    // Whether the result is read in place in the result ring (shmex_reply_is_in_place): its
    // ring space is then taken until this object is destroyed.
    bool in_place() const {
        bool in_place = false;
        detail::check(shmex_reply_is_in_place(h_.get(), &in_place), "shmex_reply_is_in_place");
        return in_place;
    }

private:
    detail::handle<shmex_reply, shmex_reply_free> h_;
};

// An abort flag for execute; trigger() from any thread.
class abort_flag {
public:
    abort_flag() {
        shmex_abort *h = nullptr;
        detail::check(shmex_abort_new(&h), "shmex_abort_new");
        h_ = detail::handle<shmex_abort, shmex_abort_free>(h);
    }
    void trigger() const { detail::check(shmex_abort_trigger(h_.get()), "shmex_abort_trigger"); }
    const shmex_abort *native() const noexcept { return h_.get(); }

private:
    detail::handle<shmex_abort, shmex_abort_free> h_;
};

// A result written in place (shmex_result_loan). Destroyed without commit(): abandoned,
// nothing is sent and the task can still be answered.
class result_loan {
public:
    explicit result_loan(shmex_result_loan *h) noexcept : h_(h) {}
    std::size_t tensor_count() const {
        std::size_t n = 0;
        detail::check(shmex_result_loan_tensor_count(h_.get(), &n),
                      "shmex_result_loan_tensor_count");
        return n;
    }
    tensor_mut at(std::size_t index) const {
        tensor_mut t{};
        detail::check(shmex_result_loan_tensor(h_.get(), index, &t.raw),
                      "shmex_result_loan_tensor");
        return t;
    }
    tensor_mut operator[](const std::string &name) const {
        tensor_mut t{};
        detail::check(shmex_result_loan_tensor_by_name(h_.get(), name.c_str(), &t.raw),
                      "shmex_result_loan_tensor_by_name");
        return t;
    }
    // Sends the result; returns whether the exchanger accepted it. Ends the loan (unless rc
    // is no return code: then it throws and the loan stays).
    bool commit(uint32_t rc = SHMEX_RC_OK) {
        bool accepted = false;
        shmex_status st = shmex_result_loan_commit(h_.get(), rc, &accepted);
        if (st != SHMEX_INVALID_ARGUMENT) (void)h_.release();
        detail::check(st, "shmex_result_loan_commit");
        return accepted;
    }
    // Abandons the loan now (as the destructor does).
    void abandon() noexcept { h_.reset(); }

private:
    detail::handle<shmex_result_loan, shmex_result_loan_abandon> h_;
};

// A task written in place (shmex_task_loan). Destroyed without execute(): abandoned, nothing
// is sent and no task is in flight.
class task_loan {
public:
    explicit task_loan(shmex_task_loan *h) noexcept : h_(h) {}
    std::size_t tensor_count() const {
        std::size_t n = 0;
        detail::check(shmex_task_loan_tensor_count(h_.get(), &n), "shmex_task_loan_tensor_count");
        return n;
    }
    tensor_mut at(std::size_t index) const {
        tensor_mut t{};
        detail::check(shmex_task_loan_tensor(h_.get(), index, &t.raw), "shmex_task_loan_tensor");
        return t;
    }
    tensor_mut operator[](const std::string &name) const {
        tensor_mut t{};
        detail::check(shmex_task_loan_tensor_by_name(h_.get(), name.c_str(), &t.raw),
                      "shmex_task_loan_tensor_by_name");
        return t;
    }
    // Sends the task and waits for the reply (see shmex_task_loan_execute). Ends the loan
    // (unless abort is a freed flag: then it throws and the loan stays).
    inline class reply execute(const abort_flag *abort = nullptr);
    void abandon() noexcept { h_.reset(); }

private:
    detail::handle<shmex_task_loan, shmex_task_loan_abandon> h_;
};

inline reply task_loan::execute(const abort_flag *abort) {
    shmex_reply *r = nullptr;
    shmex_status st = shmex_task_loan_execute(h_.get(), abort ? abort->native() : nullptr, &r);
    if (st != SHMEX_INVALID_HANDLE) (void)h_.release();
    detail::check(st, "shmex_task_loan_execute");
    return reply(r);
}

// The trainer side (shmex_agent).
class agent {
public:
    agent(const std::string &site, const std::string &agent_id,
          const shmex_agent_options *options = nullptr) {
        shmex_agent *h = nullptr;
        detail::check(shmex_agent_attach(site.c_str(), agent_id.c_str(), options, &h),
                      "shmex_agent_attach");
        h_ = detail::handle<shmex_agent, shmex_agent_free>(h);
    }
    // The next task, or nothing after timeout_ms (-1: forever). Throws shmex::error with
    // SHMEX_CLOSED once the exchanger said bye.
    std::optional<task> get_task(int64_t timeout_ms = -1) const {
        shmex_task *t = nullptr;
        shmex_status st = shmex_agent_get_task(h_.get(), timeout_ms, &t);
        if (st == SHMEX_TIMEOUT) return std::nullopt;
        detail::check(st, "shmex_agent_get_task");
        return task(t);
    }
    // Submits by copy; returns whether the exchanger accepted the result.
    bool submit_result(const data &result, uint32_t rc = SHMEX_RC_OK) const {
        bool accepted = false;
        detail::check(shmex_agent_submit_result(h_.get(), result.c(), rc, &accepted),
                      "shmex_agent_submit_result");
        return accepted;
    }
    // Lends shared memory for the result of the fetched task (see shmex_agent_loan_result).
    result_loan loan_result(const loan_spec &spec) const {
        shmex_result_loan *l = nullptr;
        detail::check(shmex_agent_loan_result(h_.get(), spec.c(), &l), "shmex_agent_loan_result");
        return result_loan(l);
    }
    bool is_aborted() const {
        bool aborted = false;
        detail::check(shmex_agent_is_aborted(h_.get(), &aborted), "shmex_agent_is_aborted");
        return aborted;
    }
    void close() const { detail::check(shmex_agent_close(h_.get()), "shmex_agent_close"); }

private:
    detail::handle<shmex_agent, shmex_agent_free> h_;
};

// The FL-client side (shmex_exchanger).
class exchanger {
public:
    exchanger(const std::string &site, const std::string &agent_id,
              const shmex_exchanger_options *options = nullptr) {
        shmex_exchanger *h = nullptr;
        detail::check(shmex_exchanger_create(site.c_str(), agent_id.c_str(), options, &h),
                      "shmex_exchanger_create");
        h_ = detail::handle<shmex_exchanger, shmex_exchanger_free>(h);
    }
    // Sends the task and waits for the reply (see shmex_exchanger_execute).
    reply execute(const std::string &task_name, const std::string &task_id, const data &task,
                  int64_t current_round = -1, int64_t num_rounds = -1,
                  const abort_flag *abort = nullptr) const {
        shmex_headers headers{task_id.c_str(), current_round, num_rounds};
        shmex_reply *r = nullptr;
        detail::check(shmex_exchanger_execute(h_.get(), task_name.c_str(), &headers, task.c(),
                                              abort ? abort->native() : nullptr, &r),
                      "shmex_exchanger_execute");
        return reply(r);
    }
    // Lends shared memory for a task (see shmex_exchanger_loan_task); execute() sends it.
    task_loan loan_task(const std::string &task_name, const std::string &task_id,
                        const loan_spec &spec, int64_t current_round = -1,
                        int64_t num_rounds = -1, const abort_flag *abort = nullptr) const {
        shmex_headers headers{task_id.c_str(), current_round, num_rounds};
        shmex_task_loan *l = nullptr;
        detail::check(shmex_exchanger_loan_task(h_.get(), task_name.c_str(), &headers, spec.c(),
                                                abort ? abort->native() : nullptr, &l),
                      "shmex_exchanger_loan_task");
        return task_loan(l);
    }
    void close() const {
        detail::check(shmex_exchanger_close(h_.get()), "shmex_exchanger_close");
    }

private:
    detail::handle<shmex_exchanger, shmex_exchanger_free> h_;
};

}  // namespace shmex

#endif  // SHMEX_HPP
