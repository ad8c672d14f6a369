import type { LifecycleEvent, LogEvent, ProgressEvent, TaskEvent, TaskObserver } from '../types.js';

/** Keeps every event it sees, in order. Meant for tests and debugging. */
export class InMemoryObserver implements TaskObserver {
  readonly events: TaskEvent[] = [];

  onLog(event: LogEvent): void {
    this.events.push(event);
  }

  onLifecycle(event: LifecycleEvent): void {
    this.events.push(event);
  }

  onProgress(event: ProgressEvent): void {
    this.events.push(event);
  }

  get logs(): LogEvent[] {
    return this.events.filter((e): e is LogEvent => e.type === 'log');
  }

  get lifecycle(): LifecycleEvent[] {
    return this.events.filter((e): e is LifecycleEvent => e.type === 'lifecycle');
  }

  get progress(): ProgressEvent[] {
    return this.events.filter((e): e is ProgressEvent => e.type === 'progress');
  }

  /** Events of one task, in order. */
  forTask(taskId: string): TaskEvent[] {
    return this.events.filter((e) => e.taskId === taskId);
  }

  clear(): void {
    this.events.length = 0;
  }
}
