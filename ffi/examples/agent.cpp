// The trainer of agent.c in C++17 with shmex.hpp: checks each task's model, adds one to
// every weight and answers by loan (written in place in shared memory); a result too large
// for one ring record (SHMEX_TOO_LARGE) is submitted by copy. Until the exchanger says bye.
// Tasks are read in place in the task ring when they arrived whole (receive_in_place), so
// each task is destroyed before the next is fetched.
//
//   c++ -std=c++17 agent.cpp -o agent $(pkg-config --cflags --libs shmex)
//   ./agent SITE AGENT_ID
#include <shmex.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

static long round_of(std::string_view meta) {
    const std::string key = "\"current_round\":";
    auto at = meta.find(key);
    return at == std::string_view::npos ? -1
                                        : std::strtol(meta.data() + at + key.size(), nullptr, 10);
}

// Writes each weight plus one into a loan and commits it; nullopt if it does not fit.
static std::optional<bool> try_loan(const shmex::agent &agent, const shmex::task &task,
                                    const char *meta) {
    shmex::loan_spec spec(SHMEX_DATA_KIND_WEIGHTS, meta);
    for (std::size_t t = 0; t < task.tensor_count(); t++) {
        shmex::tensor in = task.at(t);
        spec.add(std::string(in.name()), in.dtype(), {in.shape().begin(), in.shape().end()});
    }
    try {
        shmex::result_loan loan = agent.loan_result(spec);  // abandoned if we throw below
        for (std::size_t t = 0; t < task.tensor_count(); t++) {
            shmex::view<const float> w = task.at(t).as<float>();
            shmex::view<float> out = loan.at(t).as<float>();  // in shared memory
            for (std::size_t i = 0; i < w.size(); i++) out[i] = w[i] + 1.0f;
        }
        return loan.commit();
    } catch (const shmex::error &e) {
        if (e.status() == SHMEX_TOO_LARGE) return std::nullopt;
        throw;
    }
}

// Copies each weight plus one into our memory and submits it by copy.
static bool answer_by_copy(const shmex::agent &agent, const shmex::task &task,
                           const char *meta) {
    std::vector<std::vector<float>> updates(task.tensor_count());
    shmex::data result(SHMEX_DATA_KIND_WEIGHTS, meta);
    for (std::size_t t = 0; t < updates.size(); t++) {
        shmex::tensor in = task.at(t);
        for (float v : in.as<float>()) updates[t].push_back(v + 1.0f);
        result.add<float>(std::string(in.name()), {in.shape().begin(), in.shape().end()},
                          {updates[t].data(), updates[t].size()});
    }
    return agent.submit_result(result);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s SITE AGENT_ID\n", argv[0]);
        return 2;
    }
    try {
        shmex_agent_options options = shmex::default_agent_options();
        options.receive_in_place = 1;  // no copy of a task that fits in the ring
        shmex::agent agent(argv[1], argv[2], &options);
        int tasks = 0, in_place = 0;
        for (;;) {
            std::optional<shmex::task> task;
            try {
                task = agent.get_task(120000);
            } catch (const shmex::error &e) {
                if (e.status() == SHMEX_CLOSED) break;  // the exchanger said bye
                throw;
            }
            if (!task) throw std::runtime_error("no task for 120 s");
            if (task->in_place()) in_place++;  // its ring space is held until *task dies
            const float round = static_cast<float>(round_of(task->meta_json()));
            const char *meta = R"({"NUM_STEPS_CURRENT_ROUND": 1})";
            for (std::size_t t = 0; t < task->tensor_count(); t++) {
                shmex::tensor in = task->at(t);  // in place, valid while *task lives
                shmex::view<const float> w = in.as<float>();
                for (std::size_t i = 0; i < w.size(); i++)
                    if (w[i] != static_cast<float>(i % 1000) * 0.5f + round)
                        throw std::runtime_error(std::string(in.name()) + " is not the model");
            }
            std::optional<bool> accepted = try_loan(agent, *task, meta);
            if (!accepted) accepted = answer_by_copy(agent, *task, meta);  // too large
            if (!*accepted) throw std::runtime_error("result not accepted");
            tasks++;
        }
        std::printf("C++ agent: %d tasks checked and answered, %d read in place\n", tasks,
                    in_place);
        return 0;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "agent.cpp: %s\n", e.what());
        return 1;
    }
}
